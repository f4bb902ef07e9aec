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


def window_keys(instant: datetime, tz: ZoneInfo) -> dict[str, str]:
    """Return the day and week keys of ``instant`` in time zone ``tz``."""
    local_date = instant.astimezone(tz).date()
    return {DAY: day_key(local_date), WEEK: week_key(local_date)}


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
