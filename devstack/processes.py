"""Child processes of the local stack: started in their own session, stopped for sure."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Set by the test suite: a server or job it starts must not outlive it, even if pytest
# itself crashes (a leaked job once ran for an hour and skewed every measurement).
# `make up` leaves this off: its servers outlive the command that started them.
tie_children_to_parent = False


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def child_setup() -> Callable[[], None] | None:
    """`preexec_fn` for Popen: the child gets SIGKILL when its parent dies, if tied.

    Only from the main thread: the kernel ties the child to the thread that forked it.
    """
    if tie_children_to_parent and threading.current_thread() is threading.main_thread():
        return _die_with_parent
    return None


_ports_given: set[int] = set()


def free_port() -> int:
    """A loopback port free now, and never one this process was given before: the kernel may
    hand a just-released port out again, and a broker given one port for two listeners
    refuses to start (seen in a test run)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


@dataclass
class ManagedProcess:
    popen: subprocess.Popen

    @classmethod
    def spawn(cls, argv: list[str], log_file: Path, env: dict | None = None) -> ManagedProcess:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                preexec_fn=child_setup(),
            )
        return cls(popen)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        stop_pid(self.pid, grace)
        try:  # reap it: it was SIGKILLed at the latest when `grace` ended
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace`."""
    import time

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def port_holder(port: int) -> str | None:
    """Who listens on 127.0.0.1:`port` (pid and command line, from /proc), or None if it is free."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) != 0:
            return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {proc.name} ({command.strip()[:120]})"
    return "another process"
