"""The gateway's own bound on the readings it holds in memory.

MQTT 5 flow control (Receive Maximum) asks the broker to keep at most that many
unacknowledged messages in flight to us, but a broker may not hold to it: Mosquitto
2.0.11 was seen to send a whole backlog when a persistent session resumes, and with
InfluxDB hung the gateway once held 10,230 unacknowledged readings at a limit of
1000.  So the gateway enforces its own bound, ``pipeline.max_held_readings``: the MQTT
network thread reads the next packet only while the readings held (waiting in the
inbox, being scored, or waiting for InfluxDB / the spool to settle them) are below
it.  When it stops reading, TCP flow control holds the broker back; the network
thread keeps sending acknowledgements and pings meanwhile (see
``common.mqtt.Client.loop_read``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class HeldLimit:
    def __init__(self, limit: int, held: Callable[[], int]):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._held = held
        self._room = threading.Event()
        # Most readings held at any time since start, as seen after each message taken.
        self.peak = 0

    @property
    def held(self) -> int:
        return self._held()

    def room(self, timeout_s: float) -> bool:
        """True if one more message may be read; else waits up to ``timeout_s`` for room."""
        if self._allows():
            return True
        # Clear, then re-check: a settle that lands after the re-check sets the event.
        self._room.clear()
        if self._allows():
            return True
        self._room.wait(timeout_s)
        return self._allows()

    def _allows(self) -> bool:
        return self._held() < self.limit

    def taken(self) -> None:
        """A message was taken into the inbox: note the high-water mark."""
        held = self._held()
        self.peak = max(self.peak, held)

    def settled(self) -> None:
        """Readings were acknowledged: wake a paused reader."""
        self._room.set()
