"""Window keys and day ends: the local day and ISO week of an instant, kept per time zone."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from callguard.windows import DAY, WEEK, day_bounds, local_midnight, next_day_start, window_keys

UTC = timezone.utc


def expected(instant: datetime, tz: ZoneInfo) -> dict[str, str]:
    local = instant.astimezone(tz).date()
    year, week, _ = local.isocalendar()
    return {DAY: local.isoformat(), WEEK: f"{year}-W{week:02d}"}


@pytest.mark.parametrize("zone, start", [
    # Spring forward and fall back in London.
    ("Europe/London", datetime(2024, 3, 30, 22, 0, tzinfo=UTC)),
    ("Europe/London", datetime(2024, 10, 26, 22, 0, tzinfo=UTC)),
    # Offsets of half and three quarters of an hour.
    ("Asia/Kolkata", datetime(2024, 6, 14, 17, 0, tzinfo=UTC)),
    ("Asia/Kathmandu", datetime(2024, 6, 14, 17, 0, tzinfo=UTC)),
    # Clocks that skip from 00:00 to 01:00 (Chile's September change).
    ("America/Santiago", datetime(2024, 9, 7, 1, 0, tzinfo=UTC)),
    # A week boundary: Sunday night into Monday.
    ("Europe/London", datetime(2024, 6, 16, 21, 0, tzinfo=UTC)),
])
def test_window_keys_around_midnight(zone, start):
    tz = ZoneInfo(zone)
    # Every minute for six hours, then back and forth over the same span, so
    # that the kept days are both reused and replaced.
    instants = [start + timedelta(minutes=m) for m in range(360)]
    for instant in instants + instants[::-1] + instants[::7]:
        # The microsecond either side of the day's last instant.
        edge = instant.replace(second=59, microsecond=999_999)
        for moment in (instant, edge):
            keys = expected(moment, tz)
            day_end = expected_day_end(moment, tz)
            assert window_keys(moment, tz) == keys, moment
            assert next_day_start(moment, tz) == day_end, moment
            assert day_bounds(moment, tz) == (keys, day_end), moment


def expected_day_end(instant: datetime, tz: ZoneInfo) -> datetime:
    return local_midnight(instant.astimezone(tz).date() + timedelta(days=1), tz)


def test_window_keys_returns_a_copy():
    tz = ZoneInfo("Europe/London")
    instant = datetime(2024, 6, 14, 9, 0, tzinfo=UTC)

    window_keys(instant, tz)[DAY] = "changed"

    assert window_keys(instant, tz)[DAY] == "2024-06-14"
