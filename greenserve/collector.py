"""The cyclic garbage collector in a serving process.

Python's full collections scan every object the collector tracks, so their pause grows with
the app: about 13 ms for the load-test app, once every few seconds under load, stalling
every connection of the worker. Objects made before serving begins (modules, the app, its
caches) live as long as the process; frozen, they are out of the collector's sight, and a
full collection then scans only what requests made since (0.3 ms for the same app).
"""

import gc


def freeze_startup_objects():
    """Collect the start-up's garbage once, then freeze everything still alive.

    Frozen objects are never collected, which is why the garbage goes first. Call it from a
    command-line entry point once the server is ready: a program that embeds greenserve
    manages its own heap.
    """
    gc.collect()
    gc.freeze()


def all_objects():
    """Every object the collector tracks, frozen ones included (``gc.get_objects`` leaves
    those out). For a dying worker's stack dump: it unfreezes them for good."""
    gc.unfreeze()
    return gc.get_objects()
