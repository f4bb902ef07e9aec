"""Keys of the spend windows: a calendar day ``2024-06-14`` or an ISO week ``2024-W24``.

The caller picks the date in the site's own time zone; the store only checks
that each key is well formed for its window.
"""

import re
from datetime import date

from callguard.store.records import WINDOW_DAY, WINDOW_WEEK, WINDOWS
from callguard.windows import day_key, week_key

_DAY_KEY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_WEEK_KEY = re.compile(r"(\d{4})-W(\d{2})")


def window_keys(day: date) -> dict[str, str]:
    """Return the keys of every window that contains ``day``."""
    return {WINDOW_DAY: day_key(day), WINDOW_WEEK: week_key(day)}


def check_window_key(window: str, key: str) -> None:
    """Raise ``ValueError`` unless ``key`` is a valid key for ``window``."""
    if window not in WINDOWS:
        raise ValueError(
            f"window {window!r} is invalid; use one of {', '.join(WINDOWS)}"
        )
    if not isinstance(key, str):
        raise TypeError(f"window key {key!r} is a {type(key).__name__}; expected str")

    if window == WINDOW_DAY:
        match = _DAY_KEY.fullmatch(key)
        example = "2024-06-14"
    else:
        match = _WEEK_KEY.fullmatch(key)
        example = "2024-W24"
    if match is None:
        raise ValueError(
            f"{window} window key {key!r} is invalid; write it like {example}"
        )

    numbers = [int(part) for part in match.groups()]
    try:
        if window == WINDOW_DAY:
            date(*numbers)
        else:
            date.fromisocalendar(numbers[0], numbers[1], 1)
    except ValueError as exc:
        raise ValueError(
            f"{window} window key {key!r} is not a real date: {exc}"
        ) from None
