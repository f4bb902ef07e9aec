"""Out-of-hours barring: business hours on the trunk's wall clock, and their config."""

from datetime import datetime, timezone

import pytest

from callguard.clock import ManualClock
from callguard.config import ConfigError, load_config
from callguard.config.hours import parse_business_hours
from callguard.daemon.state import build_state
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.worker import StoreWorker
from support import RATES, write_config

FRANCE = "+33 6 12 34 56 78"
SATELLITE = "+870 773 111 111"
PREMIUM = "09011234567"
GEOGRAPHIC = "01632 960123"

HOURS = """\
bar_out_of_hours = international, premium
business_hours = Mon-Fri 08:00-18:00, Sat 09:00-13:00
international_allow = FR
"""

TRUNKS = f"""\
[trunk london]
rates = rates.csv
timezone = Europe/London
{HOURS}
[trunk newyork]
rates = rates.csv
timezone = America/New_York
{HOURS}
[number 01632960001]
allow = international, premium
"""


def utc(*fields):
    return datetime(*fields, tzinfo=timezone.utc)


class Guard:
    """A policy engine over a real SQLite store whose clock each call sets."""

    def __init__(self, directory):
        self.config = load_config(write_config(directory, trunks=TRUNKS))
        self.store = Store(self.config.general.database)
        self.store.open()
        self.worker = StoreWorker(self.store)
        self.engine = PolicyEngine(
            build_state(self.config).state,
            Ledger(self.worker),
            Reservations(),
            BlockList(),
            ManualClock(utc(2024, 1, 1)),
        )

    async def reason(self, instant, number, trunk="london", caller="01632960010"):
        self.engine.clock = ManualClock(instant)
        request = CallRequest(trunk=trunk, dialled=number, caller=caller,
                              channel="PJSIP/1001-00000012")
        return (await self.engine.decide(request)).reason

    def close(self):
        self.worker.shutdown()
        self.store.close()


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    guard = Guard(tmp_path_factory.mktemp("hours"))
    yield guard
    guard.close()


# fmt: off
LONDON = [
    # instant (UTC),                 number,     reason
    # Friday 14 June 2024, BST (UTC+1): 18:00 local is 17:00 UTC.
    (utc(2024, 6, 14, 16, 59, 59),  FRANCE,     "ok"),
    (utc(2024, 6, 14, 17, 0, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 14, 17, 0, 0),    SATELLITE,  "barred-hours:satellite"),
    (utc(2024, 6, 14, 16, 59, 59),  SATELLITE,  "ok"),
    (utc(2024, 6, 14, 17, 0, 0),    PREMIUM,    "barred-hours:premium"),
    (utc(2024, 6, 14, 17, 0, 0),    GEOGRAPHIC, "ok"),
    (utc(2024, 6, 14, 17, 0, 0),    "999",      "emergency"),
    (utc(2024, 6, 14, 6, 59, 59),   FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 14, 7, 0, 0),     FRANCE,     "ok"),
    # The weekend: Saturday 09:00-13:00 only, Sunday closed.
    (utc(2024, 6, 15, 7, 59, 59),   FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 15, 8, 0, 0),     FRANCE,     "ok"),
    (utc(2024, 6, 15, 11, 59, 59),  FRANCE,     "ok"),
    (utc(2024, 6, 15, 12, 0, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 16, 11, 0, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 17, 6, 59, 59),   FRANCE,     "barred-hours:international"),
    (utc(2024, 6, 17, 7, 0, 0),     FRANCE,     "ok"),
    # Clocks go forward at 01:00 UTC on Sunday 31 March 2024.
    (utc(2024, 3, 29, 17, 59, 59),  FRANCE,     "ok"),          # Fri 17:59:59 GMT
    (utc(2024, 3, 29, 18, 0, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 3, 31, 1, 30, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 4, 1, 6, 59, 59),    FRANCE,     "barred-hours:international"),
    (utc(2024, 4, 1, 7, 0, 0),      FRANCE,     "ok"),          # Mon 08:00 BST
    # Clocks go back at 01:00 UTC on Sunday 27 October 2024.
    (utc(2024, 10, 25, 16, 59, 59), FRANCE,     "ok"),          # Fri 17:59:59 BST
    (utc(2024, 10, 25, 17, 0, 0),   FRANCE,     "barred-hours:international"),
    (utc(2024, 10, 27, 1, 30, 0),   FRANCE,     "barred-hours:international"),
    (utc(2024, 10, 28, 7, 0, 0),    FRANCE,     "barred-hours:international"),
    (utc(2024, 10, 28, 7, 59, 59),  FRANCE,     "barred-hours:international"),
    (utc(2024, 10, 28, 8, 0, 0),    FRANCE,     "ok"),          # Mon 08:00 GMT
]
# fmt: on


@pytest.mark.parametrize("instant, number, reason", LONDON)
async def test_london_trunk(guard, instant, number, reason):
    assert await guard.reason(instant, number) == reason


# fmt: off
NEW_YORK = [
    # instant (UTC),                trunk,     reason
    # 17:59:59 EDT (UTC-4) on Friday 14 June 2024 is 22:59:59 BST.
    (utc(2024, 6, 14, 21, 59, 59), "newyork", "ok"),
    (utc(2024, 6, 14, 21, 59, 59), "london",  "barred-hours:international"),
    (utc(2024, 6, 14, 22, 0, 0),   "newyork", "barred-hours:international"),
    (utc(2024, 6, 14, 12, 0, 0),   "newyork", "ok"),
    (utc(2024, 6, 14, 11, 59, 59), "newyork", "barred-hours:international"),
    (utc(2024, 6, 14, 11, 59, 59), "london",  "ok"),
]
# fmt: on


@pytest.mark.parametrize("instant, trunk, reason", NEW_YORK)
async def test_other_time_zone(guard, instant, trunk, reason):
    assert await guard.reason(instant, FRANCE, trunk=trunk) == reason


async def test_override_allow_ignored(guard):
    evening = utc(2024, 6, 14, 17, 0, 0)

    assert await guard.reason(evening, FRANCE, caller="01632960001") == (
        "barred-hours:international"
    )
    assert await guard.reason(evening, PREMIUM, caller="01632960001") == (
        "barred-hours:premium"
    )


# fmt: off
SCHEDULES = [
    # text,                                  instants (local, naive) and whether open
    ("Mon-Fri 08:00-18:00",                  [((2024, 6, 14, 8, 0), True),
                                              ((2024, 6, 15, 12, 0), False)]),
    ("mon 9:30-12:00, MON 13:00-24:00",      [((2024, 6, 10, 9, 29), False),
                                              ((2024, 6, 10, 9, 30), True),
                                              ((2024, 6, 10, 12, 30), False),
                                              ((2024, 6, 10, 23, 59, 59), True),
                                              ((2024, 6, 11, 0, 0), False)]),
    ("Fri-Mon 00:00-24:00",                  [((2024, 6, 14, 0, 0), True),
                                              ((2024, 6, 16, 12, 0), True),
                                              ((2024, 6, 17, 23, 0), True),
                                              ((2024, 6, 18, 12, 0), False)]),
    ("Sun 10:00-11:00",                      [((2024, 6, 16, 10, 30), True),
                                              ((2024, 6, 17, 10, 30), False)]),
]
# fmt: on


@pytest.mark.parametrize("text, instants", SCHEDULES)
def test_schedule_open(text, instants):
    hours = parse_business_hours(text)

    for fields, expected in instants:
        assert (fields, hours.is_open(datetime(*fields))) == (fields, expected)


def test_schedule_empty():
    assert parse_business_hours("") is None


DAYS_HINT = "write one of Mon, Tue, Wed, Thu, Fri, Sat, Sun, or a range like Mon-Fri"
TIME_HINT = "write HH:MM from 00:00 to 23:59, or 24:00 as an end"
EXAMPLE = "Mon-Fri 08:00-18:00, Sat 09:00-13:00"

# fmt: off
BAD_KEYS = [
    # lines after "rates = ...", the line of the problem, the problem
    ("bar_out_of_hours = international", 3,
     "bar_out_of_hours: needs business_hours; set business_hours = DAYS HH:MM-HH:MM "
     f"like {EXAMPLE}, or remove bar_out_of_hours"),
    ("bar_out_of_hours = internatonal\nbusiness_hours = Mon 08:00-18:00", 3,
     "bar_out_of_hours: 'internatonal' is not a barring category; did you mean "
     "international? use one of emergency, crown-dependency, directory, freephone, "
     "geographic, international, international-premium, mobile, non-geographic, "
     "operator, pager, personal, premium, satellite, service, special-084, "
     "special-087"),
    ("bar_out_of_hours = emergency\nbusiness_hours = Mon 08:00-18:00", 3,
     "bar_out_of_hours: 'emergency' cannot be barred, because emergency calls must "
     "always connect; remove it from the list"),
    ("business_hours = Mon-Fir 08:00-18:00", 3,
     f"business_hours: 'Fir' is not a day; {DAYS_HINT}"),
    ("business_hours = Monday 08:00-18:00", 3,
     f"business_hours: 'Monday' is not a day; {DAYS_HINT}"),
    ("business_hours = Mon-Fri 08:00-25:00", 3,
     f"business_hours: '25:00' in 'Mon-Fri 08:00-25:00' is not a time; {TIME_HINT}"),
    ("business_hours = Mon-Fri 08:60-18:00", 3,
     f"business_hours: '08:60' in 'Mon-Fri 08:60-18:00' is not a time; {TIME_HINT}"),
    ("business_hours = Mon-Fri 24:00-24:00", 3,
     f"business_hours: '24:00' in 'Mon-Fri 24:00-24:00' is not a time; {TIME_HINT}"),
    ("business_hours = Mon-Fri 18:00-08:00", 3,
     "business_hours: 'Mon-Fri 18:00-08:00' ends at or before it starts; write the "
     "earlier time first, like 08:00-18:00 (use 24:00 for midnight at the end of "
     "the day)"),
    ("business_hours = Mon-Fri 08:00-08:00", 3,
     "business_hours: 'Mon-Fri 08:00-08:00' ends at or before it starts; write the "
     "earlier time first, like 08:00-18:00 (use 24:00 for midnight at the end of "
     "the day)"),
    ("business_hours = Mon-Fri", 3,
     "business_hours: 'Mon-Fri' is not a business-hours range; write DAYS "
     f"HH:MM-HH:MM like {EXAMPLE}"),
    ("\nbusiness_hours = 9-5", 4,
     f"business_hours: '9-5' is not a business-hours range; write DAYS HH:MM-HH:MM "
     f"like {EXAMPLE}"),
]
# fmt: on


def load_trunk(directory, monkeypatch, lines):
    (directory / "rates.csv").write_text(RATES)
    (directory / "callguard.conf").write_text(
        f"[trunk gamma]\nrates = rates.csv\n{lines}\n"
    )
    monkeypatch.chdir(directory)
    return load_config("callguard.conf")


@pytest.mark.parametrize("lines, line, problem", BAD_KEYS)
def test_config_bad(tmp_path, monkeypatch, lines, line, problem):
    with pytest.raises(ConfigError) as caught:
        load_trunk(tmp_path, monkeypatch, lines)

    assert str(caught.value) == f"callguard.conf:{line}: [trunk gamma] {problem}"


def test_config_several_problems(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as caught:
        load_trunk(tmp_path, monkeypatch, "business_hours = Sat 13:00-09:00, Xyz 1-2")

    assert str(caught.value).splitlines() == [
        "callguard.conf:3: [trunk gamma] business_hours: 'Sat 13:00-09:00' ends at or "
        "before it starts; write the earlier time first, like 08:00-18:00 (use 24:00 "
        "for midnight at the end of the day)",
        "callguard.conf:3: [trunk gamma] business_hours: 'Xyz' is not a day; "
        + DAYS_HINT,
    ]


def test_config_good(tmp_path, monkeypatch):
    config = load_trunk(tmp_path, monkeypatch, HOURS)
    trunk = config.trunks["gamma"]

    assert trunk.bar_out_of_hours == frozenset({"international", "premium"})
    assert trunk.business_hours.periods[0] == ((480, 1080),)
    assert trunk.business_hours.periods[5] == ((540, 780),)
    assert trunk.business_hours.periods[6] == ()


def test_config_defaults(tmp_path, monkeypatch):
    trunk = load_trunk(tmp_path, monkeypatch, "").trunks["gamma"]

    assert trunk.bar_out_of_hours == frozenset()
    assert trunk.business_hours is None
