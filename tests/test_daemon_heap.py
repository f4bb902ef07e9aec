"""The daemon keeps its loaded tables out of the collector's way, without leaking them."""

import gc
import weakref

from callguard.cli.daemon import settle_heap


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_loaded_objects_are_frozen():
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_reload_frees_the_cycles_of_the_old_tables():
    try:
        old_table = Node()
        gone = weakref.ref(old_table)
        settle_heap()  # started: the table is frozen with everything else
        del old_table
        gc.collect()
        assert gone() is not None  # frozen: a collection does not see it

        settle_heap()  # reloaded: the old table is unreachable now
        assert gone() is None
    finally:
        gc.unfreeze()
