"""Spend windows: the local date and the ISO week in a trunk's time zone.

Each spend total is keyed by its window, so a new window starts empty and no
reset job is needed. A window ends at local midnight (Monday midnight for the
week), so across a clock change a day lasts 23 or 25 hours and a week 167 or 169.
"""

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

DAY = "day"
WEEK = "week"
WINDOWS = (DAY, WEEK)


def day_key(local_date: date) -> str:
    return local_date.isoformat()


def week_key(local_date: date) -> str:
    year, week, _ = local_date.isocalendar()
    return f"{year}-W{week:02d}"


# Time zone -> (start, end, keys) of the local day that window_keys returned last.
_current_day: dict[ZoneInfo, tuple[datetime, datetime, dict[str, str]]] = {}


def window_keys(instant: datetime, tz: ZoneInfo) -> dict[str, str]:
    """Return the day and week keys of ``instant`` in time zone ``tz``.

    Every decision needs the current keys, so the keys of the last local day
    seen in each zone are kept with the UTC instants that bound that day.
    """
    cached = _current_day.get(tz)
    if cached is not None and cached[0] <= instant < cached[1]:
        return dict(cached[2])

    local_date = instant.astimezone(tz).date()
    keys = {DAY: day_key(local_date), WEEK: week_key(local_date)}
    start = local_midnight(local_date, tz)
    end = local_midnight(local_date + timedelta(days=1), tz)
    # A zone whose clocks skip midnight could put the bounds off the day itself.
    if start <= instant < end:
        _current_day[tz] = (start, end, keys)
    return dict(keys)


def local_midnight(local_date: date, tz: ZoneInfo) -> datetime:
    """Return the UTC instant at which ``local_date`` begins in ``tz``."""
    return datetime.combine(local_date, time(0), tzinfo=tz).astimezone(timezone.utc)


def next_day_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """Return the UTC instant of the next local midnight after ``instant``."""
    local_date = instant.astimezone(tz).date()
    return local_midnight(local_date + timedelta(days=1), tz)


def next_week_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """Return the UTC instant of the next local Monday 00:00 after ``instant``."""
    local_date = instant.astimezone(tz).date()
    days_ahead = 7 - local_date.weekday()
    return local_midnight(local_date + timedelta(days=days_ahead), tz)
