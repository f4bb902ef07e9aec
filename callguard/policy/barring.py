"""Which categories a call may not reach: the trunk's barring, then the number's override."""

import phonenumbers

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
    international barring for numbers in its ranges; it never opens satellite
    or international premium ranges. A number's override comes last:
    ``allow`` lifts exactly the categories it names (allowing
    ``international`` leaves satellite barred), and ``bar`` adds to the
    trunk's barring.
    """
    barred = category in expand(trunk.bar)
    if barred and category == INTERNATIONAL and _in_allowed_region(number, trunk):
        barred = False

    for override in overrides:
        if category in override.allow:
            barred = False
    for override in overrides:
        if category in expand(override.bar):
            barred = True
    return barred


def _in_allowed_region(number: Number, trunk: TrunkConfig) -> bool:
    """Check whether ``number`` lies in a range of a region of the trunk's
    ``international_allow``.

    A number in no range of its country (+353 1519 123456 in Ireland's
    premium block) passes only as a possible length, so phonenumbers cannot
    tell whether it is premium rate, and it is not allowed. Such a number of
    a country code that several regions share (+1, +7) gets the code's main
    region (US, RU), and may belong to another country besides.
    """
    if number.region not in trunk.international_allow:
        return False
    parsed = phonenumbers.parse(number.e164, None)
    return phonenumbers.is_valid_number_for_region(parsed, number.region)
