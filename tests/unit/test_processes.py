"""What the suite starts dies with it, even when pytest itself is killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from devstack.processes import port_holder
from tests.support.jobs import wait_for

# A parent that starts a tied child (as the suite starts brokers and jobs), prints its pid, then waits.
PARENT = """
import sys, time
from pathlib import Path
from devstack import processes
processes.tie_children_to_parent = True
child = processes.ManagedProcess.spawn([sys.executable, "-c", "import time; time.sleep(600)"], Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_tied_child_is_killed_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.log")], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
        wait_for(lambda: not _alive(child), timeout=10, what="the child to die with its parent")
    finally:
        try:
            os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_port_holder_names_the_process_listening_on_a_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and holder.startswith(f"pid {os.getpid()} (")
    assert port_holder(port) is None
