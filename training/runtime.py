"""Process-level settings for training and benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}


@functools.cache
def _mallopt():
    """glibc's mallopt, or None (looked up once: find_library runs ldconfig)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None  # not glibc (e.g. musl)


def set_heap_mode(keep: bool) -> bool:
    """keep=True: freed memory stays in the heap (see keep_freed_memory); False: glibc's defaults."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if keep:
        return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return all(mallopt(option, value) == 1 for option, value in _GLIBC_DEFAULTS.items())


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the OS.

    Each training step allocates and frees the same large tensors (the (targets x items) logits and
    their gradients). By default glibc serves blocks above its mmap threshold (at most 32 MiB) with
    fresh mmap calls and unmaps them on free, so every step pays the page faults again; with a
    catalogue of 23.7k items that was 38% of the step time on 2 cores (1.62x faster without it,
    scripts/bench_train.py --heap glibc keep). The price: the process keeps its
    peak memory until it exits. Returns whether the setting was applied (glibc on Linux only).
    """
    ok = set_heap_mode(True)
    if not ok and _mallopt() is not None:
        log.warning("mallopt refused the heap settings; training runs with the default allocator behaviour")
    return ok
