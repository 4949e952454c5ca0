"""Recommendation ids: unique, time-ordered UUIDv7 that carry the millisecond they were issued."""

import threading
import uuid

from intentrec.ids import IdGenerator, id_time_ms, new_id


def test_ids_are_uuid7_sorted_in_issue_order_and_carry_their_time():
    clock = iter([1_790_000_000_000] * 5 + [1_790_000_000_001] * 3)
    generate = IdGenerator(lambda: next(clock))
    ids = [generate() for _ in range(8)]
    assert ids == sorted(ids) and len(set(ids)) == 8  # the same millisecond keeps issue order too
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert [id_time_ms(i) for i in ids] == [1_790_000_000_000] * 5 + [1_790_000_000_001] * 3


def test_a_clock_that_steps_back_never_breaks_the_order():
    times = iter([1_790_000_000_500, 1_790_000_000_100, 1_790_000_000_100, 1_790_000_000_600])
    generate = IdGenerator(lambda: next(times))
    ids = [generate() for _ in range(4)]
    assert ids == sorted(ids)
    assert [id_time_ms(i) for i in ids] == [1_790_000_000_500] * 3 + [1_790_000_000_600]


def test_more_than_4096_ids_in_one_millisecond_borrow_the_next():
    generate = IdGenerator(lambda: 1_790_000_000_000)
    ids = [generate() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == 5000
    assert id_time_ms(ids[4095]) == 1_790_000_000_000 and id_time_ms(ids[4096]) == 1_790_000_000_001


def test_ids_from_many_threads_are_unique():
    found: list[str] = []

    def issue():
        found.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=issue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 8000


def test_anything_else_is_not_a_recommendation_id():
    for text in (None, 17, "", "rec-1", str(uuid.uuid4()), new_id().upper(), new_id()[:-1], new_id() + "0"):
        assert id_time_ms(text) is None, text
