"""The dialplan's CALLGUARD_EMERGENCY_NUMBERS and CALLGUARD_OUTSIDE_PREFIX against callguard's."""

import logging
from datetime import datetime, timezone

import pytest

from callguard.daemon.dialplan_globals import (
    callguard_emergency_numbers,
    compare_dialplan,
    dialplan_differences,
)
from callguard.numbers import Classifier, NumberPlan, PrefixTable
from live_support import Pbx, eventually

SNIPPET_LIST = "999,112,18000"

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATES = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,1.00,,60/60\n"


def classifier(outside_line_prefix: str = "", emergency_numbers=("999", "112")) -> Classifier:
    plan = NumberPlan("GB", outside_line_prefix=outside_line_prefix,
                      emergency_numbers=emergency_numbers)
    return Classifier(plan, PrefixTable.default())


def test_emergency_numbers_of_config_and_table():
    numbers = callguard_emergency_numbers(classifier(emergency_numbers=("999", "112", "911")))

    # 18000 is an emergency row of the shipped GB table.
    assert numbers == {"999", "112", "911", "18000"}


def test_snippet_values_agree_with_the_defaults():
    assert dialplan_differences(classifier(), SNIPPET_LIST, "") == []
    # 999 and 112 are emergency numbers for both whether listed or not.
    assert dialplan_differences(classifier(), "18000", "") == []


def test_number_only_the_dialplan_routes():
    messages = dialplan_differences(classifier(), SNIPPET_LIST + ",2222", "")

    assert len(messages) == 1
    assert messages[0].startswith("the dialplan's CALLGUARD_EMERGENCY_NUMBERS routes 2222 "
                                  "as emergency calls, but callguard does not")
    assert "add them to emergency_numbers in callguard.conf" in messages[0]


def test_number_only_callguard_knows():
    messages = dialplan_differences(classifier(emergency_numbers=("999", "112", "911")),
                                    "999,112", "")

    assert len(messages) == 1
    assert messages[0].startswith("callguard treats 18000, 911 as emergency numbers, but "
                                  "the dialplan's CALLGUARD_EMERGENCY_NUMBERS does not "
                                  "list them")


def test_invalid_entries_named():
    messages = dialplan_differences(classifier(), "999, 112,18000,,x", "")

    assert messages == [
        "the dialplan's CALLGUARD_EMERGENCY_NUMBERS has entries that are not numbers: "
        "' 112', '', 'x'; write digits separated by commas without spaces, such as "
        "999,112,18000"
    ]


@pytest.mark.parametrize("ours, dialplan", [("9", ""), ("", "9"), ("9", "90")])
def test_outside_prefixes_differ(ours, dialplan):
    messages = dialplan_differences(classifier(outside_line_prefix=ours), SNIPPET_LIST,
                                    dialplan)

    assert messages == [
        f"the dialplan's CALLGUARD_OUTSIDE_PREFIX is {dialplan!r} but callguard.conf's "
        f"outside_line_prefix is {ours!r}, so the two read dialled numbers differently, "
        "emergency numbers after the prefix included; set both to the same digits, or "
        "both empty"
    ]


def test_outside_prefix_alone_compared():
    # A dialplan with its own emergency routing may still set the prefix.
    assert len(dialplan_differences(classifier(), "", "9")) == 1
    assert dialplan_differences(classifier(outside_line_prefix="9"), "", "9") == []


async def test_nothing_compared_without_the_globals(caplog):
    async def unset(name: str) -> str:
        return ""

    caplog.set_level(logging.INFO)
    # Without the snippet's globals, a prefix of 9 in callguard.conf is no mismatch.
    assert await compare_dialplan(unset, classifier(outside_line_prefix="9")) == []
    assert "the dialplan sets no CALLGUARD_EMERGENCY_NUMBERS" in caplog.text


START = datetime(2024, 6, 14, 9, tzinfo=timezone.utc)
SYSTEM_NAME_WARNING = "Asterisk has no systemname"


@pytest.fixture
async def connected_pbx(tmp_path, caplog):
    """Start an emulated PBX with callguard, and wait for the checks after its ARI connect."""
    started = []

    async def start(*, database=None, system_name="", global_variables=None) -> Pbx:
        caplog.set_level(logging.INFO)
        pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES, database=database)
        pbx.ari.system_name = system_name
        pbx.ari.global_variables.update(global_variables or {})
        await pbx.start()
        started.append(pbx)
        await eventually(lambda: "CALLGUARD_EMERGENCY_NUMBERS" in caplog.text,
                         what="the checks after the connect")
        return pbx

    yield start
    for pbx in started:
        await pbx.stop()


async def test_compared_on_connect_and_after_reload(connected_pbx, caplog):
    pbx = await connected_pbx(global_variables={
        "CALLGUARD_EMERGENCY_NUMBERS": SNIPPET_LIST + ",2222",
        "CALLGUARD_OUTSIDE_PREFIX": "9",
    })
    await eventually(lambda: "CALLGUARD_OUTSIDE_PREFIX is '9'" in caplog.text,
                     what="the comparison after the connect")
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and "dialplan's" in record.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("the dialplan's CALLGUARD_EMERGENCY_NUMBERS routes 2222")

    # The sysadmin brings callguard.conf in line and reloads.
    text = pbx.path.read_text().replace(
        "[ari]", "outside_line_prefix = 9\nemergency_numbers = 999, 112, 2222\n[ari]", 1)
    pbx.path.write_text(text)
    caplog.clear()
    assert await pbx.app.reload()
    await eventually(lambda: "agree with callguard's settings" in caplog.text,
                     what="the comparison after the reload")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]

    # A reconnect compares again: Asterisk may have reloaded its dialplan.
    pbx.ari.global_variables["CALLGUARD_EMERGENCY_NUMBERS"] = SNIPPET_LIST
    caplog.clear()
    await pbx.ari.drop_events()
    await eventually(lambda: "callguard treats 2222 as emergency numbers" in caplog.text,
                     timeout=10, what="the comparison after the reconnect")


@pytest.mark.postgres
@pytest.mark.parametrize("system_name, warned", [("", True), ("pbx-a", False)])
async def test_system_name_with_shared_store(connected_pbx, caplog, pg_url, system_name,
                                             warned):
    await connected_pbx(database=pg_url, system_name=system_name)

    assert (SYSTEM_NAME_WARNING in caplog.text) is warned


async def test_system_name_not_read_for_sqlite(connected_pbx, caplog):
    await connected_pbx()

    assert SYSTEM_NAME_WARNING not in caplog.text


async def test_no_comparison_after_stop(connected_pbx, caplog):
    pbx = await connected_pbx()
    listener = pbx.app.ari
    close = listener.client.close

    async def close_after_connect() -> None:
        # A connect that finishes while stop() closes the client starts
        # a comparison of its own.
        listener.check_dialplan()
        await close()

    listener.client.close = close_after_connect
    caplog.clear()
    await listener.stop()

    assert listener._dialplan_check.done()
    assert "dialplan's globals" not in caplog.text
