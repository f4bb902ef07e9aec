"""The barring categories a trunk or number may name, and the parser for their lists."""

import difflib

from callguard.config.errors import InvalidValue
from callguard.numbers.categories import CATEGORIES, EMERGENCY

LIST_SEPARATOR = ","

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
    """Split a comma list into its stripped items, or none for blank text.

    Raises ``InvalidValue`` for an empty item, as in ``50,,80`` or ``50, 80,``,
    because a stray comma is a typo that may have lost an item.
    """
    if not text.strip():
        return []

    items = [item.strip() for item in text.split(LIST_SEPARATOR)]
    if all(items):
        return items

    if not items[0]:
        place = "before the first comma"
    elif not items[-1]:
        place = "after the last comma"
    else:
        place = "between two commas"
    fixed = f"{LIST_SEPARATOR} ".join(item for item in items if item)
    fix = f"write it like {fixed}" if fixed else "leave it empty for none"
    raise InvalidValue(
        f"{text!r} has an empty item {place}; remove the extra comma and {fix}"
    )


def _unknown_category(item: str) -> str:
    close = difflib.get_close_matches(item.lower(), KNOWN_CATEGORIES, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"{item!r} is not a barring category; {hint}"
        f"use one of {', '.join(KNOWN_CATEGORIES)}"
    )
