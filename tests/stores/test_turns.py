"""The per-key locks that serve one process's threads in the order they asked."""

from __future__ import annotations

import threading

from tests.helpers import wait_until
from wsgisession.stores._turns import Turns


def test_waiters_get_the_lock_in_the_order_they_asked() -> None:
    turns = Turns()
    order: list[int] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with turns.hold("k", timeout=30) as taken:
            assert taken
            holding.set()
            release.wait(30)

    def waiter(n: int) -> None:
        with turns.hold("k", timeout=30) as taken:
            assert taken
            order.append(n)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(30)
    waiters = []
    for n in range(6):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        waiters.append(thread)
        # Each waiter is queued before the next one starts: an ordering, not a timing.
        wait_until(f"waiter {n} to queue", lambda n=n: len(turns._waiting["k"]) == n + 1)
    release.set()
    for thread in [first, *waiters]:
        thread.join(30)
    assert order == list(range(6))


def test_a_wait_that_runs_out_yields_false_and_leaves_the_queue_working() -> None:
    turns = Turns()
    with turns.hold("k", timeout=1) as taken:
        assert taken
        late: list[bool] = []

        def try_late() -> None:
            with turns.hold("k", timeout=0.05) as got:
                late.append(got)

        thread = threading.Thread(target=try_late)
        thread.start()
        thread.join(30)
        assert late == [False]
    with turns.hold("k", timeout=1) as taken:
        assert taken, "a timed-out waiter was left in the queue"


def test_keys_are_independent_and_forgotten_when_free() -> None:
    turns = Turns()
    with turns.hold("a", timeout=1) as a, turns.hold("b", timeout=1) as b:
        assert a and b
    with turns.hold("a", timeout=0) as again:
        assert again
