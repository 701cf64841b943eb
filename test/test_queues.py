import threading
import time

import pytest

from neural_mapping.system.queues import Closed, DropOldestQueue


def test_drop_oldest_counts_and_keeps_newest():
    dropped = []
    q = DropOldestQueue(3, on_drop=dropped.append)
    for i in range(10):
        q.put(i)
    assert len(q) == 3 and q.dropped == 7 and dropped == list(range(7))
    assert [q.get(), q.get(), q.get()] == [7, 8, 9]


def test_get_newest_skips_and_counts():
    q = DropOldestQueue(5)
    for i in range(4):
        q.put(i)
    assert q.get(newest=True) == 3
    assert q.dropped == 3 and len(q) == 0


def test_strict_mode_blocks_instead_of_dropping():
    q = DropOldestQueue(2, block_when_full=True)
    q.put(1)
    q.put(2)
    assert q.put(3, timeout=0.05) is False
    got = []

    def consumer():
        for _ in range(3):
            got.append(q.get(timeout=2))

    t = threading.Thread(target=consumer)
    t.start()
    assert q.put(3, timeout=2)
    t.join(2)
    assert got == [1, 2, 3] and q.dropped == 0


def test_close_wakes_waiters():
    q = DropOldestQueue(1)
    errors = []

    def waiter():
        try:
            q.get()
        except Closed:
            errors.append("closed")

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert not t.is_alive() and errors == ["closed"]
    with pytest.raises(Closed):
        q.put(1)
    with pytest.raises(TimeoutError):
        DropOldestQueue(1).get(timeout=0.01)


def test_urgent_items_served_first_and_never_dropped():
    q = DropOldestQueue(2)
    q.put(1)
    q.put(2)
    q.put_urgent("req")
    q.put(3)  # drops 1, never the urgent item
    assert q.get() == "req"
    assert [q.get(), q.get()] == [2, 3] and q.dropped == 1
