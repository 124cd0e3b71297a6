"""Bytes from a serial port -> text lines, with a bounded buffer.

Nodes end lines with LF, CRLF or a bare CR; all three work, and blank lines (the
empty piece between CR and LF, even split across two reads) are skipped.  A line
longer than ``max_line_bytes`` (a node at the wrong baud rate rarely sends a newline)
is reported once and everything up to the next line end is discarded, so memory
stays bounded whatever arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"[\r\n]+")
# C0 controls except TAB, and DEL: never part of a node's text output, typical of
# binary garbage and of bytes read at the wrong baud rate.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TooLong:
    """Marker for one discarded over-long line; ``seen`` bytes were buffered before."""

    seen: int


class LineSplitter:
    def __init__(self, max_line_bytes: int = 1024):
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        """Complete lines (without line ends) found so far, plus TooLong markers."""
        out: list[bytes | TooLong] = []
        *complete, tail = _LINE_END.split(data)
        for piece in complete:
            if self._discarding:  # this piece ends the over-long line
                self._discarding = False
                continue
            if len(self._buf) + len(piece) > self.max_line_bytes:
                out.append(TooLong(len(self._buf) + len(piece)))
                self._buf.clear()
                continue
            line = bytes(self._buf) + piece if self._buf else piece
            self._buf.clear()
            if line:
                out.append(line)
        if self._discarding:
            return out
        if len(self._buf) + len(tail) > self.max_line_bytes:
            out.append(TooLong(len(self._buf) + len(tail)))
            self._buf.clear()
            self._discarding = True
        else:
            self._buf += tail
        return out

    def reset(self) -> int:
        """Forget any unfinished line (the port closed); returns its length in bytes."""
        partial = len(self._buf)
        self._buf.clear()
        self._discarding = False
        return partial


class NotText(ValueError):
    """A line that is not printable UTF-8 text: binary garbage or a wrong baud rate."""


def decode_line(raw: bytes) -> str:
    """Strict UTF-8 without control characters, surrounding whitespace removed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(f"invalid UTF-8 at byte {exc.start}") from None
    match = _CONTROL.search(text)
    if match is not None:
        raise NotText(f"control character {ord(match.group()):#04x} at {match.start()}")
    return text.strip()
