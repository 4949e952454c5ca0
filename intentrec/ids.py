"""Identifiers of served lists: unique and time-ordered (UUID version 7, RFC 9562).

    from intentrec.ids import new_id, id_time_ms
    rid = new_id()            # '0193a8e2-5c1d-7000-8f3e-...'; ids sort in the order they were issued
    id_time_ms(rid)           # the millisecond it was issued; None for text that is not such an id

The first 48 bits are the Unix time in milliseconds, so ids sort as the lists were served; the next
12 bits count ids issued by one generator within the same millisecond (so they keep their order even
then); the last 62 bits are random, so ids of different processes and hosts do not collide. A
generator never goes back in time: when the clock steps back it keeps counting on its last millisecond.
"""

from __future__ import annotations

import os
import re
import threading
import time

_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_COUNTER_MAX = 0xFFF
_RANDOM_BITS = (1 << 62) - 1


class IdGenerator:
    """Time-ordered ids; thread-safe. `clock` returns milliseconds (the wall clock by default)."""

    def __init__(self, clock=None):
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> str:
        ms = int(self.clock())
        with self._lock:
            if ms <= self._last_ms:  # the same millisecond (or a clock stepped back): count on
                ms = self._last_ms
                self._counter += 1
                if self._counter > _COUNTER_MAX:  # 4,096 ids in one millisecond: borrow the next one
                    ms, self._counter = ms + 1, 0
            else:
                self._counter = 0
            self._last_ms = ms
            counter = self._counter
        value = (
            (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | (int.from_bytes(os.urandom(8)) & _RANDOM_BITS)
        )
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


new_id = IdGenerator()


def id_time_ms(text) -> int | None:
    """The millisecond a `new_id` id was issued; None for anything else (another UUID version, a typo)."""
    if not isinstance(text, str) or not _PATTERN.fullmatch(text):
        return None
    return int(text[:8] + text[9:13], 16)
