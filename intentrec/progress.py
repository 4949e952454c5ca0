"""Progress of the steps that take more than a few seconds (the ranker, evaluation, export, batch jobs).

A bar (or a line per stage) goes to stderr when stderr is a terminal; nothing otherwise. The
environment variable `INTENTREC_PROGRESS` decides instead when set: `0` (quiet) or `1` (always).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")


def enabled() -> bool:
    setting = os.environ.get("INTENTREC_PROGRESS", "").strip().lower()
    if setting in OFF:
        return False
    if setting in ON:
        return True
    return sys.stderr.isatty()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "batch"):
    """A tqdm bar over `iterable` when progress is on; a silent pass-through otherwise."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), leave=False, file=sys.stderr)


class Stages:
    """`name [i/n] what ... 1.2 s` lines, one per stage of a job, when progress is on."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.on = enabled()
        self.started = None

    def next(self, what: str) -> None:
        self.finish()
        self.done += 1
        self.started = time.perf_counter()
        if self.on:
            print(f"{self.name} [{self.done}/{self.total}] {what} ...", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.started is not None and self.on:
            print(f" {time.perf_counter() - self.started:.1f} s", file=sys.stderr, flush=True)
        self.started = None
