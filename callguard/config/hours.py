"""Business hours of a trunk, as ``Mon-Fri 08:00-18:00, Sat 09:00-13:00``."""

import re
from dataclasses import dataclass
from datetime import datetime

from callguard.config.categories import split_list
from callguard.config.errors import InvalidValue

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAYS_PER_WEEK = 7
RANGE_PATTERN = re.compile(r"(\S+)\s+(\S+?)\s*-\s*(\S+)")
TIME_PATTERN = re.compile(r"(\d{1,2}):(\d{2})")
HOURS_EXAMPLE = "Mon-Fri 08:00-18:00, Sat 09:00-13:00"


@dataclass(frozen=True)
class BusinessHours:
    """Open periods per weekday (0 is Monday), as (start, end) minutes after midnight.

    A period contains its start and excludes its end, so ``08:00-18:00`` is open
    at 17:59:59 and closed at 18:00:00.
    """

    periods: tuple[tuple[tuple[int, int], ...], ...]

    def is_open(self, local: datetime) -> bool:
        """Check whether ``local``, a wall-clock time in the trunk's zone, is inside."""
        seconds = local.hour * 3600 + local.minute * 60 + local.second
        for start, end in self.periods[local.weekday()]:
            if start * 60 <= seconds < end * 60:
                return True
        return False


def parse_business_hours(text: str) -> BusinessHours | None:
    """Parse comma-separated ``DAYS HH:MM-HH:MM`` ranges; empty means none.

    DAYS is a day (``Sat``) or a range of days (``Mon-Fri``, or ``Fri-Mon``
    across the weekend). An end of ``24:00`` means midnight at the end of the day.
    """
    if not text:
        return None

    periods: list[list[tuple[int, int]]] = [[] for _ in range(DAYS_PER_WEEK)]
    messages = []
    for item in split_list(text):
        try:
            days, start, end = _parse_range(item)
        except InvalidValue as exc:
            messages.extend(exc.messages)
            continue

        for day in days:
            periods[day].append((start, end))

    if messages:
        raise InvalidValue(*messages)
    return BusinessHours(tuple(tuple(sorted(day)) for day in periods))


def _parse_range(item: str) -> tuple[list[int], int, int]:
    match = RANGE_PATTERN.fullmatch(item)
    if match is None:
        raise InvalidValue(
            f"{item!r} is not a business-hours range; write DAYS HH:MM-HH:MM like "
            f"{HOURS_EXAMPLE}"
        )

    days = _parse_days(match[1])
    start = _parse_time(match[2], item, allow_midnight_end=False)
    end = _parse_time(match[3], item, allow_midnight_end=True)
    if end <= start:
        raise InvalidValue(
            f"{item!r} ends at or before it starts; write the earlier time first, "
            "like 08:00-18:00 (use 24:00 for midnight at the end of the day)"
        )
    return days, start, end


def _parse_days(text: str) -> list[int]:
    first, dash, last = text.partition("-")
    names = [first, last] if dash else [first]
    indexes = []
    for name in names:
        if name.lower() not in DAY_NAMES:
            raise InvalidValue(
                f"{name!r} is not a day; write one of "
                f"{', '.join(day.capitalize() for day in DAY_NAMES)}, or a range "
                "like Mon-Fri"
            )
        indexes.append(DAY_NAMES.index(name.lower()))

    if not dash:
        return indexes

    # Fri-Mon runs across the weekend: Fri, Sat, Sun, Mon.
    count = (indexes[1] - indexes[0]) % DAYS_PER_WEEK + 1
    return [(indexes[0] + offset) % DAYS_PER_WEEK for offset in range(count)]


def _parse_time(text: str, item: str, *, allow_midnight_end: bool) -> int:
    match = TIME_PATTERN.fullmatch(text)
    hours = int(match[1]) if match else -1
    minutes = int(match[2]) if match else -1
    valid = match is not None and 0 <= hours <= 23 and 0 <= minutes <= 59
    if allow_midnight_end and (hours, minutes) == (24, 0):
        valid = True
    if not valid:
        raise InvalidValue(
            f"{text!r} in {item!r} is not a time; write HH:MM from 00:00 to 23:59, "
            "or 24:00 as an end"
        )
    return hours * 60 + minutes
