"""A minimal HTTP/1.1 client for load generation: keep-alive, prebuilt request bytes.

Costs little CPU per request (no header parsing beyond status, length and the
``Server-Timing`` figure), so on a 2-core machine the client leaves the cores to the
server being measured.
"""

from __future__ import annotations

import re
import socket

_TIMING = re.compile(rb"server-timing: *app;dur=([0-9.]+)", re.IGNORECASE)


class RawClient:
    def __init__(self, port: int):
        self._port = port
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> None:
        self._sock = socket.create_connection(("127.0.0.1", self._port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, raw: bytes) -> tuple[int, float | None]:
        """Send one request; returns (status, server-side ms or None)."""
        for attempt in (1, 2):
            if self._sock is None:
                self._connect()
            try:
                return self._exchange(raw)
            except (ConnectionError, BrokenPipeError):
                # An idle keep-alive connection the server closed: reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read_more(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def _exchange(self, raw: bytes) -> tuple[int, float | None]:
        assert self._sock is not None
        self._sock.sendall(raw)
        while b"\r\n\r\n" not in self._buf:
            self._read_more()
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        match = re.search(rb"content-length: *(\d+)", lower)
        length = int(match.group(1)) if match else 0
        self._buf = rest
        while len(self._buf) < length:
            self._read_more()
        self._buf = self._buf[length:]
        if b"connection: close" in lower or b"connection: close" in raw[:200].lower():
            self.close()
        timing = _TIMING.search(head)
        return status, float(timing.group(1)) if timing else None


def build_request(port: int, body: bytes, keep_alive: bool = True) -> bytes:
    close = "" if keep_alive else "Connection: close\r\n"
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
