"""The read loop: open the port (and reopen it with capped backoff when it vanishes),
split bytes into lines, parse and validate them, hand readings to the outbox.

Nothing that arrives on the wire can stop the loop: every bad line is counted by
reason and logged at a bounded rate, and only a stop request ends :meth:`run`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import serial

from common.logs import RateLimitedLog
from contract import Rejected, encode_reading
from sensors.serial_bridge.config import BridgeConfig
from sensors.serial_bridge.lines import LineSplitter, NotText, TooLong, decode_line
from sensors.serial_bridge.parsers import LineParser, ReceiptClock
from sensors.serial_bridge.stats import BridgeStats

log = logging.getLogger(__name__)

_HINT = {
    "too_long": " (no line end: wrong baud rate, or the node does not end lines?)",
    "not_text": " (binary garbage, or the wrong baud rate?)",
}


class ReadingSink(Protocol):
    """Where readings go: ``sensors.publisher.ReadingPublisher`` in production."""

    def publish(self, line: str, device: str, payload: bytes, *, block: bool = True) -> bool: ...


class Backoff:
    """Capped exponential delay between reopen attempts."""

    def __init__(self, minimum_s: float, maximum_s: float):
        self.minimum_s = minimum_s
        self.maximum_s = maximum_s
        self._next = minimum_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum_s, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.minimum_s


def open_port(cfg: BridgeConfig) -> serial.SerialBase:
    """A device path or any pyserial URL (socket://, rfc2217://, loop://)."""
    return serial.serial_for_url(cfg.port, baudrate=cfg.baud, timeout=cfg.reader.read_timeout_s)


def read_chunk(port: serial.SerialBase) -> bytes:
    """Whatever has arrived, waiting at most the port's timeout for the first byte."""
    return port.read(max(1, port.in_waiting))


class SerialBridge:
    def __init__(
        self,
        cfg: BridgeConfig,
        sink: ReadingSink,
        stop: threading.Event,
        stats: BridgeStats | None = None,
    ):
        self.cfg = cfg
        self.stats = stats or BridgeStats()
        self._sink = sink
        self._stop = stop
        self._splitter = LineSplitter(cfg.reader.max_line_bytes)
        self._parser = LineParser(cfg.parse)
        self._clock = ReceiptClock()
        self._backoff = Backoff(cfg.reader.reopen_min_s, cfg.reader.reopen_max_s)
        self._bad_log = RateLimitedLog(log, 10.0)
        self._port_log = RateLimitedLog(log, 30.0)
        # Refreshed at least every second while the loop runs (reads time out, backoff
        # waits are sliced): the systemd watchdog is only fed while it is fresh.
        self.heartbeat = time.monotonic()

    def alive(self, max_age_s: float = 10.0) -> bool:
        """The read loop is still turning (not stuck in a read, a publish or a lock)."""
        return time.monotonic() - self.heartbeat < max_age_s

    def run(self) -> None:
        """Read until the stop event is set; the port is always closed on return."""
        wait_first = False
        while not self._stop.is_set():
            if wait_first and self._wait(self._backoff.next()):
                break
            # A port that opens but fails at once must not make this loop spin:
            # the backoff only resets once data has actually arrived.
            wait_first = True
            port = self._open()
            if port is None:
                continue
            try:
                self._pump(port)
            except (serial.SerialException, OSError) as exc:
                self.stats.port_lost += 1
                log.warning("serial port %s lost: %s; reopening", self.cfg.port, exc)
            finally:
                self._close(port)

    def _wait(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless stopped (returns True then), keeping the heartbeat."""
        deadline = time.monotonic() + delay_s
        while True:
            self.heartbeat = now = time.monotonic()
            if now >= deadline:
                return False
            if self._stop.wait(min(deadline - now, 1.0)):
                return True

    def _open(self) -> serial.SerialBase | None:
        try:
            port = open_port(self.cfg)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.stats.open_failures += 1
            self._port_log.warning("open", "cannot open %s: %s; will retry", self.cfg.port, exc)
            return None
        self.stats.opens += 1
        self.stats.port_open = True
        log.info(
            "opened %s at %d baud (%s lines)%s",
            self.cfg.port,
            self.cfg.baud,
            self.cfg.parse.format,
            f", reopen #{self.stats.reopens}" if self.stats.reopens else "",
        )
        return port

    def _close(self, port: serial.SerialBase) -> None:
        self.stats.port_open = False
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("closing %s: %s", self.cfg.port, exc)
        partial = self._splitter.reset()
        if partial:
            self._reject("partial", f"{partial} bytes of an unfinished line lost", b"")

    def _pump(self, port: serial.SerialBase) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            data = read_chunk(port)
            if data:
                self._backoff.reset()
                self.handle_chunk(data, time.time_ns())

    def handle_chunk(self, data: bytes, received_ns: int) -> None:
        """Bytes as read from the port, all received at ``received_ns``."""
        self.stats.bytes_read += len(data)
        for item in self._splitter.feed(data):
            if isinstance(item, TooLong):
                self.stats.lines += 1
                limit = self.cfg.reader.max_line_bytes
                self._reject("too_long", f"line over {limit} bytes discarded", b"")
            else:
                self.handle_line(item, received_ns)

    def handle_line(self, raw: bytes, received_ns: int) -> None:
        try:
            text = decode_line(raw)
        except NotText as exc:
            self.stats.lines += 1
            self._reject("not_text", str(exc), raw)
            return
        if not text:
            return
        self.stats.lines += 1
        if text.startswith("#"):
            # The node's own messages ("# DHT22 read failed"): worth seeing, not a reading.
            self.stats.comments += 1
            self._bad_log.warning("comment", "node %s says: %s", self.cfg.device, text[:200])
            return
        try:
            reading = self._parser.parse(text, received_ns)
        except Rejected as exc:
            self._reject(exc.reason, exc.detail, raw)
            return
        self.stats.readings += 1
        ts = reading.node_ts if reading.node_ts is not None else self._clock.stamp(received_ns)
        payload = encode_reading(reading.values, ts=ts, seq=reading.seq)
        if self._sink.publish(self.cfg.line, self.cfg.device, payload, block=False):
            self.stats.queued += 1
        else:
            # Blocking here would only move the loss into the serial driver's buffer.
            self.stats.dropped += 1
            self._bad_log.warning(
                "dropped",
                "outbox full (%d readings waiting for the broker): newest reading dropped",
                self.cfg.outbox.max_pending,
            )

    def _reject(self, reason: str, detail: str, raw: bytes) -> None:
        self.stats.invalid[reason] += 1
        self._bad_log.warning(
            reason,
            "%s: line rejected, %s: %s%s%s",
            self.cfg.port,
            reason,
            detail,
            _HINT.get(reason, ""),
            f"; starts {raw[:48]!r}" if raw else "",
        )
