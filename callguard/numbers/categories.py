"""Names of the number categories that prefix tables assign and policies bar."""

EMERGENCY = "emergency"
INTERNATIONAL = "international"
SATELLITE = "satellite"
INTERNATIONAL_PREMIUM = "international-premium"

CATEGORIES: frozenset[str] = frozenset(
    {
        EMERGENCY,
        "service",
        # Operator services such as GB 100 and 155 can connect chargeable calls
        # on the caller's behalf, so they are barrable apart from "service".
        "operator",
        "premium",
        "special-084",
        "special-087",
        "directory",
        "personal",
        "pager",
        "mobile",
        "crown-dependency",
        "geographic",
        "non-geographic",
        "freephone",
        INTERNATIONAL,
        SATELLITE,
        INTERNATIONAL_PREMIUM,
    }
)

# Barring "international" bars the whole family.
INTERNATIONAL_CATEGORIES: frozenset[str] = frozenset(
    {INTERNATIONAL, SATELLITE, INTERNATIONAL_PREMIUM}
)
