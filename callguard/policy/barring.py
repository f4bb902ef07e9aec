"""Which categories a call may not reach: the trunk's barring, then the number's override."""

from callguard.config import NumberOverride, TrunkConfig
from callguard.numbers import INTERNATIONAL_CATEGORIES, Number

INTERNATIONAL = "international"


def expand(categories: frozenset[str]) -> frozenset[str]:
    """Barring ``international`` also bars satellite and international premium numbers."""
    if INTERNATIONAL in categories:
        return categories | INTERNATIONAL_CATEGORIES
    return categories


def is_barred(
    category: str,
    number: Number,
    trunk: TrunkConfig,
    overrides: list[NumberOverride],
) -> bool:
    """Return True when ``category`` is barred for this trunk and calling number.

    A country in the trunk's ``international_allow`` passes the trunk's
    international barring; it never opens satellite or international premium
    ranges. A number's override comes last: ``allow`` lifts exactly the
    categories it names (allowing ``international`` leaves satellite barred),
    and ``bar`` adds to the trunk's barring.
    """
    barred = category in expand(trunk.bar)
    if barred and category == INTERNATIONAL and number.region in trunk.international_allow:
        barred = False

    for override in overrides:
        if category in override.allow:
            barred = False
    for override in overrides:
        if category in expand(override.bar):
            barred = True
    return barred
