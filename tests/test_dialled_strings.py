"""Dialled strings that phones or attackers send to a UK PBX, decided end to end.

Each string goes through a FastAGI session with the running daemon, as the
dialplan sends it, and through the control socket, as ``callguardctl check``
asks. The trunk bars premium, international, special-084, special-087 and
directory, so operator, personal, pager and crown-dependency numbers are
allowed on it. The expected decisions follow Ofcom's National Telephone
Numbering Plan and the shipped prefix table, not callguard's own output.
"""

import contextlib

import pytest

from callguard.clock import SystemClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.daemon.control import ask
from emulator.fastagi import AGICall, run_fastagi_call
from support import free_port, write_config

TRUNK = "gamma"
BARRED = "premium, international, special-084, special-087, directory"
RATES = "prefix,description,rate,connection_fee,increments\n"

ALLOW = "ALLOW"
DENY = "DENY"
OK = "ok"
EMERGENCY = "emergency"
INVALID = "invalid-number"
UNCLASSIFIED = "unclassified"

# Strings dialled on a PBX without an outside-line prefix:
# (dialled, result, reason, category).
# fmt: off
PLAIN = [
    # Geographic numbers, 01632 960xxx and 020 7946 0xxx being Ofcom's drama ranges.
    ("01632960123",                 ALLOW, OK,            "geographic"),
    ("01632 960123",                ALLOW, OK,            "geographic"),
    ("(01632) 960123",              ALLOW, OK,            "geographic"),
    ("01632-960-123",               ALLOW, OK,            "geographic"),
    ("01632.960.123",               ALLOW, OK,            "geographic"),
    ("0-1-6-3-2-9-6-0-1-2-3",       ALLOW, OK,            "geographic"),
    (" 01632 960123 ",              ALLOW, OK,            "geographic"),
    ("020 7946 0123",               ALLOW, OK,            "geographic"),
    ("0113 496 0123",               ALLOW, OK,            "geographic"),
    ("0118 496 0000",               ALLOW, OK,            "geographic"),
    ("016977 23456",                ALLOW, OK,            "geographic"),
    ("020 7946 01234",              DENY,  INVALID,       ""),
    ("01632 9601234",               DENY,  INVALID,       ""),
    ("020 7946 012",                DENY,  INVALID,       ""),
    ("0163",                        DENY,  INVALID,       ""),
    ("1632 960123",                 DENY,  INVALID,       ""),
    # The home country code in its written forms.
    ("+44 1632 960123",             ALLOW, OK,            "geographic"),
    ("+441632960123",               ALLOW, OK,            "geographic"),
    ("+44 (0) 1632 960123",         ALLOW, OK,            "geographic"),
    ("+44(0)1632960123",            ALLOW, OK,            "geographic"),
    ("+44-(0)-20-7946-0123",        ALLOW, OK,            "geographic"),
    ("+44 0 20 7946 0123",          ALLOW, OK,            "geographic"),
    ("0044 1632 960123",            ALLOW, OK,            "geographic"),
    ("00 44 1632 960123",           ALLOW, OK,            "geographic"),
    ("0044 (0) 1632 960123",        ALLOW, OK,            "geographic"),
    ("00440 20 7946 0123",          ALLOW, OK,            "geographic"),
    ("tel:+441632960123",           ALLOW, OK,            "geographic"),
    ("TEL:+44-1632-960123",         ALLOW, OK,            "geographic"),
    ("+44 00 20 7946 0123",         DENY,  INVALID,       ""),
    ("(+44) 20 7946 0123",          DENY,  INVALID,       ""),
    ("+0044 1632 960123",           DENY,  INVALID,       ""),
    ("++441632960123",              DENY,  INVALID,       ""),
    ("+44 20 7946 01234",           DENY,  INVALID,       ""),
    ("+44",                         DENY,  INVALID,       ""),
    ("0044",                        DENY,  INVALID,       ""),
    ("+",                           DENY,  INVALID,       ""),
    ("00",                          DENY,  INVALID,       ""),
    # 03 numbers cost as much as a landline call.
    ("0300 123 4567",               ALLOW, OK,            "non-geographic"),
    ("0345 123 4567",               ALLOW, OK,            "non-geographic"),
    ("+44 370 123 4567",            ALLOW, OK,            "non-geographic"),
    # 05: 055 corporate numbers may cost as much as premium rate, 056 is
    # VoIP, and the 0500 range is closed, so no number has its length.
    ("0551 234 5678",               DENY,  "barred:premium",     "premium"),
    ("0561 234 5678",               ALLOW, OK,            "non-geographic"),
    ("0500 123456",                 DENY,  INVALID,       ""),
    # 07: personal numbers, mobiles, pagers and the crown dependencies' mobiles.
    ("070 1234 5678",               ALLOW, OK,            "personal"),
    ("+44 70 1234 5678",            ALLOW, OK,            "personal"),
    ("07700 900123",                ALLOW, OK,            "mobile"),
    ("07700-900-123",               ALLOW, OK,            "mobile"),
    ("+44 7700 900123",             ALLOW, OK,            "mobile"),
    ("0044 7700 900123",            ALLOW, OK,            "mobile"),
    ("07123 456789",                ALLOW, OK,            "mobile"),
    ("07400 123456",                ALLOW, OK,            "mobile"),
    ("07500 123456",                ALLOW, OK,            "mobile"),
    ("07800 123456",                ALLOW, OK,            "mobile"),
    ("07900 123456",                ALLOW, OK,            "mobile"),
    ("07640 123456",                ALLOW, OK,            "pager"),
    ("07624 123456",                ALLOW, OK,            "crown-dependency"),
    ("+44 7624 123456",             ALLOW, OK,            "crown-dependency"),
    ("07781 123456",                ALLOW, OK,            "crown-dependency"),
    ("07797 123456",                ALLOW, OK,            "crown-dependency"),
    ("01481 123456",                ALLOW, OK,            "crown-dependency"),
    ("01534 123456",                ALLOW, OK,            "crown-dependency"),
    ("01624 123456",                ALLOW, OK,            "crown-dependency"),
    ("07700 9001234",               DENY,  INVALID,       ""),
    ("07624 1234567",               DENY,  INVALID,       ""),
    ("07700 90012",                 DENY,  INVALID,       ""),
    ("07624 12345",                 DENY,  INVALID,       ""),
    ("0712 3456",                   DENY,  INVALID,       ""),
    # 08: freephone, and business rate numbers with a service charge.
    ("0800 123 4567",               ALLOW, OK,            "freephone"),
    ("0800 123456",                 ALLOW, OK,            "freephone"),
    ("0800 1111",                   ALLOW, OK,            "freephone"),
    ("0808 157 0000",               ALLOW, OK,            "freephone"),
    ("+44 800 123 4567",            ALLOW, OK,            "freephone"),
    ("(0800) 123 4567",             ALLOW, OK,            "freephone"),
    ("0800 123 45678",              DENY,  INVALID,       ""),
    ("0843 123 4567",               DENY,  "barred:special-084", "special-084"),
    ("0844 123 4567",               DENY,  "barred:special-084", "special-084"),
    ("0845 123 4567",               DENY,  "barred:special-084", "special-084"),
    ("0845 4647",                   DENY,  "barred:special-084", "special-084"),
    ("+44 845 123 4567",            DENY,  "barred:special-084", "special-084"),
    ("0870 123 4567",               DENY,  "barred:special-087", "special-087"),
    ("0871 123 4567",               DENY,  "barred:premium",     "premium"),
    ("0872 123 4567",               DENY,  "barred:premium",     "premium"),
    ("0873 123 4567",               DENY,  "barred:premium",     "premium"),
    ("+44 871 234 5678",            DENY,  "barred:premium",     "premium"),
    # 09: premium rate, in every form that reaches it.
    ("0900 123 4567",               DENY,  "barred:premium",     "premium"),
    ("0906 123 4567",               DENY,  "barred:premium",     "premium"),
    ("0909 123 4567",               DENY,  "barred:premium",     "premium"),
    ("0982 123 4567",               DENY,  "barred:premium",     "premium"),
    ("+44 909 123 4567",            DENY,  "barred:premium",     "premium"),
    ("+44 (0) 909 123 4567",        DENY,  "barred:premium",     "premium"),
    ("0044 909 123 4567",           DENY,  "barred:premium",     "premium"),
    ("00 44 (0) 909 123 4567",      DENY,  "barred:premium",     "premium"),
    ("+440 909 123 4567",           DENY,  "barred:premium",     "premium"),
    ("0 0 4 4 9 0 9 1 2 3 4 5 6 7", DENY,  "barred:premium",     "premium"),
    ("(0909) 123 4567",             DENY,  "barred:premium",     "premium"),
    ("tel:+44-909-123-4567",        DENY,  "barred:premium",     "premium"),
    ("141 0909 123 4567",           DENY,  "barred:premium",     "premium"),
    ("1470 0909 123 4567",          DENY,  "barred:premium",     "premium"),
    ("18001 0909 123 4567",         DENY,  "barred:premium",     "premium"),
    ("0909 123 45678",              DENY,  INVALID,       ""),
    ("0909 123 456",                DENY,  INVALID,       ""),
    ("+4400909 123 4567",           DENY,  INVALID,       ""),
    # Short codes.
    ("999",                         ALLOW, EMERGENCY,     "emergency"),
    ("112",                         ALLOW, EMERGENCY,     "emergency"),
    ("18000",                       ALLOW, EMERGENCY,     "emergency"),
    ("9 9 9",                       ALLOW, EMERGENCY,     "emergency"),
    ("(999)",                       ALLOW, EMERGENCY,     "emergency"),
    ("999#",                        ALLOW, EMERGENCY,     "emergency"),
    ("999##",                       ALLOW, EMERGENCY,     "emergency"),
    ("tel:999",                     ALLOW, EMERGENCY,     "emergency"),
    ("141999",                      ALLOW, EMERGENCY,     "emergency"),
    ("1470 112",                    ALLOW, EMERGENCY,     "emergency"),
    ("999" + " " * 1000,            ALLOW, EMERGENCY,     "emergency"),
    ("9990",                        DENY,  UNCLASSIFIED,  ""),
    ("112112",                      DENY,  UNCLASSIFIED,  ""),
    ("999#1",                       DENY,  INVALID,       ""),
    ("+44 999",                     DENY,  INVALID,       ""),
    ("101",                         ALLOW, OK,            "service"),
    ("105",                         ALLOW, OK,            "service"),
    ("111",                         ALLOW, OK,            "service"),
    ("119",                         ALLOW, OK,            "service"),
    ("116000",                      ALLOW, OK,            "service"),
    ("116111",                      ALLOW, OK,            "service"),
    ("116117",                      ALLOW, OK,            "service"),
    ("116123",                      ALLOW, OK,            "service"),
    ("141 116123",                  ALLOW, OK,            "service"),
    ("1161234",                     DENY,  INVALID,       ""),
    ("118118",                      DENY,  "barred:directory",   "directory"),
    ("118 500",                     DENY,  "barred:directory",   "directory"),
    ("11888",                       DENY,  "barred:directory",   "directory"),
    ("141 118118",                  DENY,  "barred:directory",   "directory"),
    ("1181181",                     DENY,  INVALID,       ""),
    ("100",                         ALLOW, OK,            "operator"),
    ("155",                         ALLOW, OK,            "operator"),
    # The speaking clock is charged per call, and 1471 can call the last
    # caller back. The line provider's own services are service.
    ("123",                         DENY,  "barred:premium",     "premium"),
    ("150",                         ALLOW, OK,            "service"),
    ("151",                         ALLOW, OK,            "service"),
    ("152",                         ALLOW, OK,            "service"),
    ("154",                         ALLOW, OK,            "service"),
    ("159",                         ALLOW, OK,            "service"),
    ("1571",                        ALLOW, OK,            "service"),
    ("17070",                       ALLOW, OK,            "service"),
    ("1471",                        ALLOW, OK,            "operator"),
    ("153",                         DENY,  UNCLASSIFIED,  ""),
    ("141",                         DENY,  UNCLASSIFIED,  ""),
    ("1470",                        DENY,  UNCLASSIFIED,  ""),
    # Caller-ID and text relay prefixes before a national number.
    ("141 01632 960123",            ALLOW, OK,            "geographic"),
    ("1470 01632 960123",           ALLOW, OK,            "geographic"),
    ("18001 01632 960123",          ALLOW, OK,            "geographic"),
    ("18002 07700 900123",          ALLOW, OK,            "mobile"),
    ("141 00 1 212 555 0123",       DENY,  "barred:international", "international"),
    ("1470 +44 909 123 4567",       DENY,  INVALID,       ""),
    # International numbers, which the trunk bars.
    ("+1 212 555 0123",             DENY,  "barred:international", "international"),
    ("001 212 555 0123",            DENY,  "barred:international", "international"),
    ("00 1 212 555 0123",           DENY,  "barred:international", "international"),
    ("+1 800 555 0123",             DENY,  "barred:international", "international"),
    ("+1 876 555 0123",             DENY,  "barred:international", "international"),
    ("+1 809 555 0123",             DENY,  "barred:international", "international"),
    ("+1 284 123 4567",             DENY,  "barred:international", "international"),
    ("+1 900 555 0123",             DENY,  "barred:international-premium", "international-premium"),
    ("011 1 212 555 0123",          DENY,  INVALID,       ""),
    ("+1 212 555 012",              DENY,  INVALID,       ""),
    ("+1 212 555 01234",            DENY,  INVALID,       ""),
    ("+353 1 234 5678",             DENY,  "barred:international", "international"),
    ("00353 87 123 4567",           DENY,  "barred:international", "international"),
    ("+353 1550 123456",            DENY,  "barred:international-premium", "international-premium"),
    ("+33 1 42 68 53 00",           DENY,  "barred:international", "international"),
    ("+33 8 99 12 34 56",           DENY,  "barred:international-premium", "international-premium"),
    ("+33 (0)1 42 68 53 00",        DENY,  INVALID,       ""),
    ("+49 30 123456",               DENY,  "barred:international", "international"),
    ("+49 900 1234567",             DENY,  "barred:international-premium", "international-premium"),
    ("+39 06 1234 5678",            DENY,  "barred:international", "international"),
    ("+39 899 123456",              DENY,  "barred:international-premium", "international-premium"),
    ("+43 900 123456",              DENY,  "barred:international-premium", "international-premium"),
    ("+41 900 123 456",             DENY,  "barred:international-premium", "international-premium"),
    ("+31 906 123 456",             DENY,  "barred:international-premium", "international-premium"),
    ("+61 1900 123 456",            DENY,  "barred:international-premium", "international-premium"),
    ("+7 809 123 4567",             DENY,  "barred:international-premium", "international-premium"),
    ("+7 495 123 45 67",            DENY,  "barred:international", "international"),
    ("+86 10 1234 5678",            DENY,  "barred:international", "international"),
    ("+91 22 1234 5678",            DENY,  "barred:international", "international"),
    ("+252 1 234567",               DENY,  "barred:international", "international"),
    ("+682 21 234",                 DENY,  "barred:international", "international"),
    ("+290 8999",                   DENY,  "barred:international", "international"),
    # In phonenumbers' ranges no Cook Islands number starts with 1, and the
    # only four-digit numbers of +290 are Tristan da Cunha's (8xxx).
    ("+682 12345",                  DENY,  INVALID,       ""),
    ("+290 1234",                   DENY,  INVALID,       ""),
    ("+800 1234 5678",              DENY,  "barred:international", "international"),
    ("+870 773 123 456",            DENY,  "barred:satellite",     "satellite"),
    ("+881 6 1234 5678",            DENY,  "barred:satellite",     "satellite"),
    ("+882 16 1234 5678",           DENY,  "barred:satellite",     "satellite"),
    ("+883 5100 1234 5678",         DENY,  "barred:satellite",     "satellite"),
    ("+979 1 2345 6789",            DENY,  "barred:international-premium", "international-premium"),
    ("+979 1234 5678",              DENY,  INVALID,       ""),
    ("+00972590000000",             DENY,  INVALID,       ""),
    # Strings that are no telephone number.
    ("",                            DENY,  INVALID,       ""),
    ("s",                           DENY,  INVALID,       ""),
    ("i",                           DENY,  INVALID,       ""),
    ("t",                           DENY,  INVALID,       ""),
    ("h",                           DENY,  INVALID,       ""),
    ("0800 FLOWERS",                DENY,  INVALID,       ""),
    ("*21*01632960123",             DENY,  INVALID,       ""),
    ("#31#01632960123",             DENY,  INVALID,       ""),
    ("*67 01632960123",             DENY,  INVALID,       ""),
    ("01632960123#",                DENY,  INVALID,       ""),
    ("01632960123,1",               DENY,  INVALID,       ""),
    ("01632960123;ext=1",           DENY,  INVALID,       ""),
    ("01632960123@pbx.example",     DENY,  INVALID,       ""),
    ("01632960123/1",               DENY,  INVALID,       ""),
    ("sip:01632960123@pbx.example", DENY,  INVALID,       ""),
    ("tel:+44-1632-960123;phone-context=example.com", DENY, INVALID, ""),
    ("tel:01632960123;phone-context=+44", DENY, INVALID, ""),
    ("0163\x1b[2J2960123",          DENY,  INVALID,       ""),
    ("01632\x07960123",             DENY,  INVALID,       ""),
    ("0\u200e1632960123",           DENY,  INVALID,       ""),
    ("\uff10\uff11\uff16\uff13\uff12\uff19\uff16\uff10\uff11\uff12\uff13", DENY, INVALID, ""),
    ("\u0660\u0661\u0666\u0663\u0662\u0669\u0666\u0660\u0661\u0662\u0663", DENY, INVALID, ""),
    ("\u06f0\u06f1\u06f6\u06f3\u06f2\u06f9\u06f6\u06f0\u06f1\u06f2\u06f3", DENY, INVALID, ""),
    ("\u0966\u0967\u096c\u0969\u0968\u096f\u096c\u0966\u0967\u0968\u0969", DENY, INVALID, ""),
    ("\u096f\u096f\u096f",          DENY,  INVALID,       ""),
    ("01632960123" + "0" * 2000,    DENY,  INVALID,       ""),
    ("0" * 65,                      DENY,  INVALID,       ""),
]

# Strings dialled on a PBX whose phones dial 9 for an outside line.
OUTSIDE_LINE_9 = [
    ("9 01632 960123",              ALLOW, OK,            "geographic"),
    ("901632960123",                ALLOW, OK,            "geographic"),
    ("01632 960123",                ALLOW, OK,            "geographic"),
    ("9+44 1632 960123",            ALLOW, OK,            "geographic"),
    ("9 00 44 1632 960123",         ALLOW, OK,            "geographic"),
    ("9 07700 900123",              ALLOW, OK,            "mobile"),
    ("9 0800 1111",                 ALLOW, OK,            "freephone"),
    ("9 116123",                    ALLOW, OK,            "service"),
    ("9 141 01632 960123",          ALLOW, OK,            "geographic"),
    # The dialplan strips the 9 only at the start, so the trunk would get it.
    ("141 9 01632 960123",          DENY,  INVALID,       ""),
    ("999",                         ALLOW, EMERGENCY,     "emergency"),
    ("9999",                        ALLOW, EMERGENCY,     "emergency"),
    ("9 112",                       ALLOW, EMERGENCY,     "emergency"),
    ("918000",                      ALLOW, EMERGENCY,     "emergency"),
    ("141 9 999",                   ALLOW, EMERGENCY,     "emergency"),
    ("9 0909 123 4567",             DENY,  "barred:premium",     "premium"),
    ("909091234567",                DENY,  "barred:premium",     "premium"),
    ("9+44 909 123 4567",           DENY,  "barred:premium",     "premium"),
    ("9 0044 909 123 4567",         DENY,  "barred:premium",     "premium"),
    ("9 1470 0909 123 4567",        DENY,  "barred:premium",     "premium"),
    ("9 0845 4647",                 DENY,  "barred:special-084", "special-084"),
    ("9 118118",                    DENY,  "barred:directory",   "directory"),
    ("9 00 1 212 555 0123",         DENY,  "barred:international", "international"),
    ("9 1632960123",                DENY,  INVALID,       ""),
    ("9(0)1632960123",              DENY,  INVALID,       ""),
    ("-902121234567",               DENY,  INVALID,       ""),
    ("(9) 01632 960123",            DENY,  INVALID,       ""),
    ("9",                           DENY,  INVALID,       ""),
    ("99",                          DENY,  INVALID,       ""),
]

# Strings dialled on a PBX in the North American plan, with a table of its own
# because the shipped one is for GB. Numbers with +1 are looked up in national form.
NANP_TABLE = """\
prefix,category,description
911,emergency,Emergency services
411,directory,Directory assistance
1800,freephone,Toll-free
1888,freephone,Toll-free
1900,premium,Premium rate
1212,geographic,New York
1876,international,Jamaica
1809,international,Dominican Republic
+,international,International call
"""
NANP = [
    ("212 555 0123",                ALLOW, OK,            "geographic"),
    ("1 212 555 0123",              ALLOW, OK,            "geographic"),
    ("+1 212 555 0123",             ALLOW, OK,            "geographic"),
    ("(212) 555-0123",              ALLOW, OK,            "geographic"),
    ("011 1 212 555 0123",          ALLOW, OK,            "geographic"),
    ("1 800 555 0123",              ALLOW, OK,            "freephone"),
    ("911",                         ALLOW, EMERGENCY,     "emergency"),
    ("112",                         ALLOW, EMERGENCY,     "emergency"),
    ("1 900 555 0123",              DENY,  "barred:premium",     "premium"),
    ("900 555 0123",                DENY,  "barred:premium",     "premium"),
    ("011 1 900 555 0123",          DENY,  "barred:premium",     "premium"),
    ("1 876 555 0123",              DENY,  "barred:international", "international"),
    ("+1 809 555 0123",             DENY,  "barred:international", "international"),
    ("011 44 20 7946 0123",         DENY,  "barred:international", "international"),
    ("011 44 909 123 4567",         DENY,  "barred:international-premium", "international-premium"),
    ("411",                         DENY,  "barred:directory",   "directory"),
    ("00 44 20 7946 0123",          DENY,  INVALID,       ""),
    ("011 876 555 0123",            DENY,  INVALID,       ""),
    ("1 212 555 01234",             DENY,  INVALID,       ""),
    ("1 212 555 012",               DENY,  INVALID,       ""),
    ("1 876 555 012",               DENY,  INVALID,       ""),
    ("555 0123",                    DENY,  INVALID,       ""),
]
# fmt: on


def trunk_section() -> str:
    # Barred attempts would otherwise block the endpoint after three of them.
    return f"[trunk {TRUNK}]\nbar = {BARRED}\ndefault_rate = 0.05\nban_after = 1000\n"


@contextlib.asynccontextmanager
async def running_daemon(tmp_path, general=""):
    """Run the daemon on a free loopback port; yield its config and FastAGI port."""
    port = free_port()
    path = write_config(tmp_path, port=port, general=general, trunks=trunk_section(),
                        rates=RATES)
    config = load_config(path)
    app = Application(config, clock=SystemClock())
    await app.start()
    try:
        yield config, port
    finally:
        await app.stop()


async def check_over_socket(config, dialled: str, channel: str = "") -> dict:
    """Return the report that ``callguardctl check`` gets from the daemon."""
    return await ask(config.general.control_socket, {
        "command": "check", "number": dialled, "trunk": TRUNK, "caller": "01632960010",
        "channel": channel, "accountcode": "", "source": "",
    })


async def decide_all(tmp_path, cases, general="") -> list[str]:
    """Decide every case through FastAGI and the control socket; return the mismatches."""
    mismatches = []
    async with running_daemon(tmp_path, general) as (config, port):
        for index, (dialled, result, reason, category) in enumerate(cases):
            expected = (result, reason, category)
            call = AGICall(extension=dialled, arguments=(dialled, TRUNK),
                           channel=f"PJSIP/phone{index}-{index:08x}",
                           uniqueid=f"1796397405.{index}", callerid="01632960010")
            outcome = await run_fastagi_call("127.0.0.1", port, call)
            variables = outcome.variables
            over_fastagi = (variables.get("CALLGUARD_RESULT"),
                            variables.get("CALLGUARD_REASON"),
                            variables.get("CALLGUARD_CATEGORY"))
            if over_fastagi != expected:
                mismatches.append(f"FastAGI {dialled!r}: {over_fastagi}, expected {expected}")

            report = await check_over_socket(config, dialled, call.channel)
            over_socket = (report.get("result"), report.get("reason"), report.get("category"))
            if over_socket != expected:
                mismatches.append(f"check {dialled!r}: {over_socket}, expected {expected}")
    return mismatches


def test_tables_cover_enough_strings():
    assert len(PLAIN) + len(OUTSIDE_LINE_9) + len(NANP) >= 150


async def test_dialled_strings_plain(tmp_path):
    assert await decide_all(tmp_path, PLAIN) == []


async def test_dialled_strings_outside_line_9(tmp_path):
    assert await decide_all(tmp_path, OUTSIDE_LINE_9, "outside_line_prefix = 9\n") == []


async def test_dialled_strings_nanp_home(tmp_path):
    table = tmp_path / "prefixes-us.csv"
    table.write_text(NANP_TABLE)
    general = (f"home_country = US\ntimezone = America/New_York\ncurrency = USD\n"
               f"emergency_numbers = 911, 112\nprefixes = {table}\n")

    assert await decide_all(tmp_path, NANP, general) == []


@pytest.mark.parametrize("dialled", ["01632960123\x00", "0909\x001234567"])
async def test_nul_byte_denied_by_check(tmp_path, dialled):
    # A NUL byte cannot travel in a FastAGI line, so only the check receives it.
    async with running_daemon(tmp_path) as (config, _):
        report = await check_over_socket(config, dialled)

    assert report["result"] == DENY
    assert report["reason"] == INVALID
