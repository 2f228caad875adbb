"""Handling listings of 100,000 files in Python without paying for the cyclic GC.

Parsing a listing, reading the stored state and planning a sync each create hundreds of
thousands of container objects, none of them in a reference cycle. CPython looks for
cycles after every 700 new containers, and now and then walks every live object: for
a large listing that cost as much as the work itself (docs/performance.md). Reference
counting frees all of them anyway; only the search for cycles has to wait.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_resume = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; nests, also across threads.

    Nothing is frozen when it resumes (`gc.freeze` would also freeze any garbage cycle
    alive at that moment, out of the collector's reach for good: a slow leak in a
    service that syncs every few minutes for months).
    """
    global _depth, _resume  # noqa: PLW0603 - the collector is process-wide too
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
