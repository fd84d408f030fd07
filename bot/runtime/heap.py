"""Garbage-collector settings for a long-running service process.

CPython's cyclic collector scans every tracked object of a generation when it runs. After start-up a
service holds tens of thousands of objects that live as long as the process (modules, compiled flows
and templates, the console's routes) and would be scanned again by every full collection, and the
default young-generation threshold (700 allocations) runs a collection every few messages.
:func:`settle_after_start_up` moves what start-up built out of the collector's reach
(``gc.freeze``) and collects the young generation less often. Reference counting still frees almost
everything at once; only reference cycles wait for the collector. Measured in ``bench/pipeline.py``
(``docs/performance.md``).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)
MIDDLE_THRESHOLD = 20  # young collections per middle-generation collection (default: 10)
OLD_THRESHOLD = 50  # middle collections per full collection (default: 10)


def settle_after_start_up() -> None:
    """Collect once, freeze the surviving start-up objects, and raise the collection thresholds.

    Call once, in the serving process, after the application is built and before traffic starts."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
