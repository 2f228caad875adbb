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
_froze = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; nests, also across threads.

    When the last block exits, the objects still alive are frozen (`gc.freeze`) before
    the collector resumes: otherwise its first run would walk all of them, young as
    they are, and they die soon after by reference counting anyway. The next pause
    unfreezes them, so a cycle among them is collected at the latest after it.
    """
    global _depth, _resume, _froze  # noqa: PLW0603 - the collector is process-wide too
    with _lock:
        if _depth == 0:
            if _froze:
                gc.unfreeze()
                _froze = False
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                if gc.get_freeze_count() == 0:  # never thaw what someone else froze
                    gc.freeze()
                    _froze = True
                gc.enable()
