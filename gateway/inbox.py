"""The hand-off from the MQTT network threads to the scorer, in batches.

``queue.Queue`` takes a lock and notifies a condition for every message put and got:
at thousands of readings a second that was ~8 % of the gateway's interpreter time,
and every put could wake the scorer for one message.  Here producers append to a
deque (atomic under the GIL) and wake the scorer only when what it waits for is
there: the first message, then a full batch.  The scorer takes whole batches.

Bounded: QoS 1 flow control (Receive Maximum) already caps what is unacknowledged;
past ``capacity`` (a QoS 0 flood) a producer waits for the scorer instead of growing
memory.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

# A producer blocked on a full inbox re-checks at least this often.
_ROOM_POLL_S = 0.05


class Inbox(Generic[T]):
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._wake = threading.Event()
        # While the scorer sleeps: how many waiting items should wake it (0 = awake).
        self._wake_at = 0
        self._room = threading.Event()
        self._producer_blocked = False

    def __len__(self) -> int:
        return len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        items = self._items
        items.append(item)
        wake_at = self._wake_at
        if wake_at and len(items) >= wake_at:
            self._wake_at = 0
            self._wake.set()
        if len(items) > self.capacity:
            self._wait_for_room()

    def _wait_for_room(self) -> None:
        while len(self._items) > self.capacity:
            # Clear before flagging, so a signal sent after the flag is never lost.
            self._room.clear()
            self._producer_blocked = True
            # A batch bigger than the capacity cannot fill while we wait: wake a
            # scorer that is waiting for one (it may have started to wait just now).
            if self._wake_at:
                self._wake_at = 0
                self._wake.set()
            if len(self._items) > self.capacity:
                self._room.wait(_ROOM_POLL_S)

    def take(self, batch_max: int, fill_wait_s: float, idle_wait_s: float) -> list[T]:
        """Up to ``batch_max`` items: waits ``idle_wait_s`` for the first one (else
        returns []), then up to ``fill_wait_s`` more for a full batch."""
        if not self._wait_for(1, idle_wait_s):
            return []
        if fill_wait_s > 0:
            self._wait_for(batch_max, fill_wait_s)
        items = self._items
        popleft = items.popleft
        batch = [popleft() for _ in range(min(len(items), batch_max))]
        if self._producer_blocked:
            self._producer_blocked = False
            self._room.set()
        return batch

    def _wait_for(self, n: int, timeout_s: float) -> bool:
        if len(self._items) >= n:
            return True
        # Clear, then announce, then re-check: a producer that appends after the
        # re-check sees _wake_at and sets the event, so no wake-up is lost.
        self._wake.clear()
        self._wake_at = n
        if len(self._items) < n:
            self._wake.wait(timeout_s)
        self._wake_at = 0
        return len(self._items) >= n
