"""A dict for many long-lived entries that stays in the collector's oldest generation."""


class LongLivedDict(dict):
    """A dict of many long-lived entries that the garbage collector keeps tracking.

    In CPython 3.11, which callguard runs on, a full collection stops
    tracking an exact dict whose keys and values are all untracked, such as
    a dict of tuples of strings, numbers and datetimes. The next insert of a
    new tuple tracks the dict again, in the youngest generation, so the next
    young collection walks every entry, and so does each older collection
    that the dict is promoted through. CPython 3.11 never stops tracking an
    instance of a dict subclass, so once promoted it stays in the oldest
    generation, and only full collections walk it.

    NOTE: a CPython whose collector tracks dicts differently may make this
    subclass change nothing. tests/test_daemon_heap.py checks the behaviour.
    """

    __slots__ = ()
