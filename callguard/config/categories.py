"""The barring categories a trunk or number may name, and the parser for their lists."""

import difflib

from callguard.config.errors import InvalidValue
from callguard.numbers.categories import CATEGORIES, EMERGENCY

# The names come from the numbers layer, which assigns them, so a category that
# a prefix table can produce can always be barred. The order is for messages.
KNOWN_CATEGORIES: tuple[str, ...] = tuple(
    [EMERGENCY] + sorted(CATEGORIES - {EMERGENCY})
)


def parse_categories(text: str, *, barring: bool) -> frozenset[str]:
    """Parse a comma list of categories, case-insensitively; empty means none.

    With ``barring`` set the list may not name ``emergency``, because emergency calls
    must always connect.
    """
    categories = set()
    messages = []
    for item in split_list(text):
        name = item.lower()
        if name not in KNOWN_CATEGORIES:
            messages.append(_unknown_category(item))
            continue

        if barring and name == EMERGENCY:
            messages.append(
                f"{item!r} cannot be barred, because emergency calls must always "
                "connect; remove it from the list"
            )
            continue

        categories.add(name)

    if messages:
        raise InvalidValue(*messages)
    return frozenset(categories)


def split_list(text: str) -> list[str]:
    """Split a comma list into its stripped, non-empty items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _unknown_category(item: str) -> str:
    close = difflib.get_close_matches(item.lower(), KNOWN_CATEGORIES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"{item!r} is not a barring category; {hint}"
        f"use one of {', '.join(KNOWN_CATEGORIES)}"
    )
