"""The daemon keeps its loaded tables out of the collector's way, without leaking them."""

import gc
import weakref

from callguard.cli.daemon import settle_heap


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_start_freezes_loaded_objects():
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_reload_frees_old_cycles():
    try:
        old_table = Node()
        old_table_ref = weakref.ref(old_table)
        settle_heap()  # started: the table is frozen with everything else
        del old_table
        gc.collect()
        assert old_table_ref() is not None  # frozen: a collection does not see it

        settle_heap()  # reloaded: the old table is unreachable now
        assert old_table_ref() is None
    finally:
        gc.unfreeze()
