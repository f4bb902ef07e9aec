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


# Time zone -> the last two local days looked up there, each as (start, end,
# keys) with its bounds as UTC instants. Every decision needs the current day,
# and a call's budget or charges that run past midnight need the next one too.
_recent_days: dict[ZoneInfo, tuple[tuple, tuple | None]] = {}


def _local_day(instant: datetime, tz: ZoneInfo) -> tuple[datetime, datetime, dict[str, str]]:
    """Return (start, end, keys) of the local day in ``tz`` that contains ``instant``."""
    recent = _recent_days.get(tz)
    if recent is not None:
        for day in recent:
            if day is not None and day[0] <= instant < day[1]:
                return day

    local_date = instant.astimezone(tz).date()
    keys = {DAY: day_key(local_date), WEEK: week_key(local_date)}
    day = (local_midnight(local_date, tz), local_midnight(local_date + timedelta(days=1), tz),
           keys)
    # A zone whose clocks skip midnight could put the bounds off the day itself.
    if day[0] <= instant < day[1]:
        _recent_days[tz] = (day, recent[0] if recent is not None else None)
    return day


def window_keys(instant: datetime, tz: ZoneInfo) -> dict[str, str]:
    """Return the day and week keys of ``instant`` in time zone ``tz``."""
    return dict(_local_day(instant, tz)[2])


def day_bounds(instant: datetime, tz: ZoneInfo) -> tuple[dict[str, str], datetime]:
    """Return the window keys of ``instant`` and the UTC instant its local day ends.

    The keys are shared with later calls: read them, do not change them.
    """
    day = _local_day(instant, tz)
    return day[2], day[1]


def local_midnight(local_date: date, tz: ZoneInfo) -> datetime:
    """Return the UTC instant at which ``local_date`` begins in ``tz``."""
    return datetime.combine(local_date, time(0), tzinfo=tz).astimezone(timezone.utc)


def next_day_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """Return the UTC instant of the next local midnight after ``instant``."""
    return _local_day(instant, tz)[1]


def next_week_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """Return the UTC instant of the next local Monday 00:00 after ``instant``."""
    local_date = instant.astimezone(tz).date()
    days_ahead = 7 - local_date.weekday()
    return local_midnight(local_date + timedelta(days=days_ahead), tz)
