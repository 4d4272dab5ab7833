"""Fault injection for the guarantee tests: a loopback TCP proxy that refuses or stalls connections."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

from devstack.processes import free_port


class FlakyProxy:
    """A loopback TCP proxy in front of a server that can refuse or stall connections.

    Modes: "pass" forwards; "refuse" closes new connections at once (and drops open
    ones); "stall" accepts and never answers (and drops open ones).
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._mode = "pass"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._running = True
        self.stalled = 0  # connections or requests left hanging
        self._stall_request: Callable[[str, str], bool] | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall_when(self, predicate: Callable[[str, str], bool]) -> None:
        """Hang any request whose (method, path) satisfies the predicate, and all after it."""
        self._stall_request = predicate

    def _should_stall(self, chunk: bytes) -> bool:
        predicate = self._stall_request
        if predicate is None:
            return False
        for match in _REQUEST_LINE.finditer(chunk):
            if predicate(match.group(1).decode(), match.group(2).decode()):
                self._stall_request = lambda method, path: True
                return True
        return False

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self._mode = mode
            if mode == "pass":
                self._stall_request = None
            else:
                for conn in self._open:
                    _close(conn)
                self._open.clear()

    def close(self) -> None:
        self._running = False
        self.set_mode("refuse")
        _close(self._listener)

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "refuse":
                    _close(client)
                    continue
                self._open.append(client)
                if mode == "stall":
                    self.stalled += 1
            if mode == "pass":
                try:
                    upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
                except OSError:
                    _close(client)
                    continue
                with self._lock:
                    self._open.append(upstream)
                threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        """Copy bytes one way; on the request side, hang where `stall_when` says so."""
        try:
            while data := src.recv(65536):
                if requests and self._should_stall(data):
                    self.stalled += 1
                    while self._stall_request is not None and self._running:  # hang until reset
                        time.sleep(0.1)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


_REQUEST_LINE = re.compile(rb"(PUT|GET|DELETE|HEAD|POST) (\S+) HTTP/1\.1")


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
