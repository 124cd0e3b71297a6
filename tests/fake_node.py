"""A fake sensor node on a pseudo-terminal, for the serial bridge tests.

The bridge opens a stable path (a symlink, as udev makes /dev/serial/by-id/...)
that points at the pty's slave side; the node writes into the master side as a
microcontroller writes to its USB serial.  ``unplug()`` closes the pty and removes
the link, ``plug()`` makes a new pty and points the link at it.
"""

from __future__ import annotations

import os
import random
import tty
from pathlib import Path

import orjson


class FakeNode:
    def __init__(self, link: Path, *, seed: int = 1):
        self.link = link
        self.bytes_written = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._rng = random.Random(seed)
        self.seq = 0
        self.plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        assert self._master is None, "already plugged"
        master, slave = os.openpty()
        # Raw mode as a USB CDC device has it: no echo, no CR/LF translation.
        tty.setraw(slave)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)  # atomic re-point, like udev

    def unplug(self) -> None:
        self.link.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def write(self, data: bytes) -> None:
        assert self._master is not None, "node is unplugged"
        view = memoryview(data)
        while view:  # the pty buffer is small: large writes go out in pieces
            sent = os.write(self._master, view)
            view = view[sent:]
        self.bytes_written += len(data)

    def sample(self) -> dict[str, float]:
        """Plausible values of a healthy machine (the model's normal region)."""
        return {
            "temperature_c": round(self._rng.gauss(62.0, 1.0), 2),
            "humidity_pct": round(self._rng.gauss(44.0, 1.0), 1),
            "sound_db": round(self._rng.gauss(76.0, 1.0), 1),
        }

    def json_line(self, end: bytes = b"\n", **extra: object) -> bytes:
        """One reading as the example firmware prints it, with the next ``seq``."""
        body = {**self.sample(), "seq": self.seq, **extra}
        self.seq += 1
        return orjson.dumps(body) + end

    def send_readings(self, count: int, end: bytes = b"\n") -> list[int]:
        """Write ``count`` JSON readings; returns their seq numbers."""
        first = self.seq
        self.write(b"".join(self.json_line(end) for _ in range(count)))
        return list(range(first, self.seq))

    def garbage(self, size: int) -> bytes:
        """Bytes as read at the wrong baud rate: high-bit noise without line ends."""
        noise = bytes(self._rng.choice(range(0x80, 0x100)) for _ in range(size - 1))
        return b"\xff" + noise  # 0xff never occurs in UTF-8

    def close(self) -> None:
        if self.plugged:
            self.unplug()
