"""gateway.inbox.Inbox: the batched hand-off from the MQTT threads to the scorer.

Threads synchronise on Events and on the inbox's own state, never on sleeps.  Where
a test needs the scorer to be asleep inside ``take`` (to exercise the wake-up path
rather than the "already there" path) it waits for ``_wake_at`` to announce what the
sleeper waits for: the only white-box look at the class.  Either interleaving must
give the same result, so the tests stay deterministic.
"""

from __future__ import annotations

import threading
import time

import pytest

from devstack.process import wait_until
from gateway.inbox import Inbox

# Upper bound for anything that should be "at once"; far below the 30 s waits used.
PROMPT_S = 5.0
# How long a blocked producer must stay blocked to count as blocked.
STILL_BLOCKED_S = 0.2


class Taker(threading.Thread):
    """Runs one ``take`` in a thread; keeps the batch and how long it took."""

    def __init__(self, inbox: Inbox, batch_max: int, fill_wait_s: float, idle_wait_s: float):
        super().__init__(daemon=True)
        self.inbox = inbox
        self.args = (batch_max, fill_wait_s, idle_wait_s)
        self.batch: list | None = None
        self.elapsed_s = -1.0

    def run(self) -> None:
        start = time.monotonic()
        self.batch = self.inbox.take(*self.args)
        self.elapsed_s = time.monotonic() - start

    def result(self) -> list:
        self.join(PROMPT_S)
        assert not self.is_alive(), "take() did not return"
        assert self.batch is not None
        return self.batch


class Putter(threading.Thread):
    """Puts ``items`` in a thread; ``done`` is set once the last ``put`` returned."""

    def __init__(self, inbox: Inbox, items: list):
        super().__init__(daemon=True)
        self.inbox = inbox
        self.items = items
        self.done = threading.Event()

    def run(self) -> None:
        for item in self.items:
            self.inbox.put(item)
        self.done.set()


def _asleep_waiting_for(inbox: Inbox, n: int) -> None:
    """Wait until the consumer sleeps in ``take`` until ``n`` items are there."""
    wait_until(lambda: inbox._wake_at == n, PROMPT_S, f"take() to wait for {n} items")


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_refused(capacity):
    with pytest.raises(ValueError, match="capacity"):
        Inbox(capacity)


def test_capacity_one_is_accepted():
    inbox: Inbox[str] = Inbox(1)
    inbox.put("a")
    assert inbox.capacity == 1
    assert inbox.take(10, 0, 0) == ["a"]


def test_take_on_an_empty_inbox_returns_nothing_after_the_idle_wait():
    inbox: Inbox[int] = Inbox(10)
    start = time.monotonic()
    assert inbox.take(10, fill_wait_s=1.0, idle_wait_s=0.05) == []
    elapsed = time.monotonic() - start
    # It waited the idle time (Event.wait never returns early on a timeout) and did
    # not go on to wait the fill time with nothing there.
    assert 0.045 <= elapsed < 0.9
    assert inbox.take(10, fill_wait_s=1.0, idle_wait_s=0) == []


def test_items_come_out_in_order_and_at_most_batch_max_at_a_time():
    inbox: Inbox[int] = Inbox(100)
    for i in range(10):
        inbox.put(i)
    assert len(inbox) == inbox.qsize() == 10
    assert inbox.take(4, 0, 0) == [0, 1, 2, 3]
    assert inbox.take(4, 0, 0) == [4, 5, 6, 7]
    assert len(inbox) == 2
    assert inbox.take(4, 0, 0) == [8, 9]
    assert inbox.take(4, 0, 0) == []
    assert len(inbox) == 0


def test_a_full_batch_already_waiting_is_returned_at_once():
    inbox: Inbox[int] = Inbox(100)
    for i in range(7):
        inbox.put(i)
    start = time.monotonic()
    assert inbox.take(5, fill_wait_s=30, idle_wait_s=30) == [0, 1, 2, 3, 4]
    assert time.monotonic() - start < PROMPT_S
    assert inbox.qsize() == 2


def test_a_partial_batch_is_returned_when_the_fill_wait_ends():
    inbox: Inbox[int] = Inbox(100)
    inbox.put(1)
    inbox.put(2)
    start = time.monotonic()
    assert inbox.take(10, fill_wait_s=0.05, idle_wait_s=30) == [1, 2]
    assert 0.045 <= time.monotonic() - start < PROMPT_S


def test_a_sleeping_consumer_is_woken_by_the_first_put():
    inbox: Inbox[str] = Inbox(100)
    taker = Taker(inbox, batch_max=10, fill_wait_s=0, idle_wait_s=30)
    taker.start()
    _asleep_waiting_for(inbox, 1)
    producer = Putter(inbox, ["hello"])
    producer.start()
    assert taker.result() == ["hello"]
    assert taker.elapsed_s < PROMPT_S
    assert producer.done.wait(PROMPT_S)


def test_a_consumer_filling_a_batch_is_woken_when_the_batch_is_full():
    inbox: Inbox[int] = Inbox(100)
    taker = Taker(inbox, batch_max=5, fill_wait_s=30, idle_wait_s=30)
    taker.start()
    inbox.put(0)  # wakes it from the idle wait into the fill wait
    _asleep_waiting_for(inbox, 5)
    producer = Putter(inbox, [1, 2, 3, 4, 5, 6])
    producer.start()
    batch = taker.result()
    assert taker.elapsed_s < PROMPT_S  # far from the 30 s fill wait
    # Woken at five; the producer may have added more before take() popped, but a
    # batch never exceeds batch_max and keeps the order.
    assert batch == [0, 1, 2, 3, 4]
    assert producer.done.wait(PROMPT_S)
    assert inbox.take(10, 0, 0) == [5, 6]


def test_every_item_from_many_producers_is_taken_exactly_once():
    producers, per_producer = 8, 2000
    # Small capacity: producers also block and get released along the way.
    inbox: Inbox[tuple[int, int]] = Inbox(64)
    threads = [Putter(inbox, [(p, i) for i in range(per_producer)]) for p in range(producers)]
    for thread in threads:
        thread.start()
    taken: list[tuple[int, int]] = []
    deadline = time.monotonic() + 2 * PROMPT_S
    while len(taken) < producers * per_producer and time.monotonic() < deadline:
        taken.extend(inbox.take(50, fill_wait_s=0.002, idle_wait_s=0.1))
    for thread in threads:
        assert thread.done.wait(PROMPT_S), "a producer is still blocked"
    taken.extend(inbox.take(10_000, 0, 0))  # nothing may be left behind either

    assert len(taken) == producers * per_producer
    assert set(taken) == {(p, i) for p in range(producers) for i in range(per_producer)}
    for p in range(producers):  # each producer's items keep their order
        assert [i for q, i in taken if q == p] == list(range(per_producer))
    assert len(inbox) == 0


def test_a_producer_blocks_past_capacity_until_a_take_makes_room():
    inbox: Inbox[str] = Inbox(2)
    inbox.put("a")
    inbox.put("b")  # at capacity, not over it: returns
    assert len(inbox) == 2
    producer = Putter(inbox, ["c"])
    producer.start()
    assert not producer.done.wait(STILL_BLOCKED_S), "put() returned over capacity"
    assert len(inbox) == 3  # the item is in; only the producer waits
    assert inbox.take(1, 0, 0) == ["a"]
    assert producer.done.wait(PROMPT_S), "put() still blocked after a take made room"
    assert inbox.take(10, 0, 0) == ["b", "c"]


def test_a_take_that_leaves_the_inbox_over_capacity_keeps_producers_blocked():
    inbox: Inbox[str] = Inbox(1)
    inbox.put("a")
    first, second = Putter(inbox, ["b"]), Putter(inbox, ["c"])
    first.start()
    assert not first.done.wait(STILL_BLOCKED_S)
    second.start()
    wait_until(lambda: len(inbox) == 3, PROMPT_S, "both producers to append")
    assert inbox.take(1, 0, 0) == ["a"]  # two left, capacity one: still over
    assert not first.done.wait(STILL_BLOCKED_S)
    assert not second.done.is_set()
    taken = inbox.take(1, 0, 0)  # one left: both may go on
    assert first.done.wait(PROMPT_S) and second.done.wait(PROMPT_S)
    assert sorted(taken + inbox.take(10, 0, 0)) == ["b", "c"]


def test_a_producer_blocked_on_capacity_wakes_a_consumer_waiting_for_a_bigger_batch():
    # capacity < batch_max: the batch can never fill, so blocking must end the fill wait.
    inbox: Inbox[int] = Inbox(capacity=4)
    threading.Thread(target=lambda: [inbox.put(i) for i in range(100)], daemon=True).start()
    started = time.monotonic()
    batch = inbox.take(batch_max=10, fill_wait_s=30.0, idle_wait_s=30.0)
    assert time.monotonic() - started < 5.0
    assert batch == list(range(len(batch))) and len(batch) >= 1
