"""Call requests and decisions: their constructors, and the time a decision records."""

import dataclasses
import inspect
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from callguard.clock import ManualClock
from callguard.daemon.recorder import decision_row
from callguard.metering.guard import LiveGuard
from callguard.policy.decision import CallRequest, Decision

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


def field_default(field: dataclasses.Field) -> object:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("cls", [CallRequest, Decision])
def test_constructor_lists_every_field(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)

    assert [parameter.name for parameter in parameters] == [field.name for field in fields]
    for parameter, field in zip(parameters, fields):
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert parameter.default is inspect.Parameter.empty, field.name
        elif field.default_factory is dataclasses.MISSING:
            assert parameter.default == field.default, field.name


@pytest.mark.parametrize("cls, required", [
    (CallRequest, ("gamma", "01632960123")),
    (Decision, ("ALLOW", "ok", "gamma", "01632960123")),
])
def test_constructor_sets_defaults(cls, required):
    record = cls(*required)

    for field, value in zip(dataclasses.fields(cls), required):
        assert getattr(record, field.name) == value
    for field in dataclasses.fields(cls)[len(required):]:
        assert getattr(record, field.name) == field_default(field), field.name


@pytest.mark.parametrize("cls", [CallRequest, Decision])
def test_constructor_sets_each_field(cls):
    # A distinct value per field, so that two swapped assignments show.
    values = {field.name: f"value of {field.name}" for field in dataclasses.fields(cls)}

    positional = cls(*values.values())
    by_name = cls(**values)

    for name, value in values.items():
        assert getattr(positional, name) == value, name
        assert getattr(by_name, name) == value, name
    assert set(vars(by_name)) == set(values)


def test_decision_remaining_not_shared():
    first = Decision("ALLOW", "ok", "gamma", "01632960123")
    second = Decision("ALLOW", "ok", "gamma", "01632960123")

    first.remaining["day"] = Decimal("1.00")

    assert second.remaining == {}


def test_records_stay_frozen():
    request = CallRequest("gamma", "01632960123", uniqueid="1796397405.7")
    decision = Decision("DENY", "barred:premium", "gamma", "09011234567", decided_at=NOW)

    with pytest.raises(dataclasses.FrozenInstanceError):
        request.trunk = "delta"
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.result = "ALLOW"
    assert dataclasses.replace(request, trunk="delta").uniqueid == "1796397405.7"
    assert hash(request) == hash(CallRequest("gamma", "01632960123", uniqueid="1796397405.7"))


def test_decision_time_not_compared():
    decision = Decision("DENY", "barred:premium", "gamma", "09011234567", decided_at=NOW)

    assert decision == dataclasses.replace(decision, decided_at=None)
    assert "decided_at" not in repr(decision)


def test_audit_row_keeps_decision_time():
    # The row carries the moment the limits were checked, not the later
    # moment the decision was announced.
    clock = ManualClock(NOW + timedelta(seconds=5))
    request = CallRequest("gamma", "01632960123", uniqueid="1796397405.7")
    timed = Decision("ALLOW", "ok", "gamma", "01632960123", decided_at=NOW)
    untimed = Decision("DENY", "invalid-number", "gamma", "0151496012#")

    assert decision_row(request, timed, clock, "node-a")[0] == NOW
    assert decision_row(request, untimed, clock, "node-a")[0] == NOW + timedelta(seconds=5)


def test_live_guard_books_decision_time():
    guard = LiveGuard(None, None, None, ManualClock(NOW + timedelta(seconds=5)), None)
    request = CallRequest("gamma", "01632960123", uniqueid="1796397405.7")
    timed = Decision("ALLOW", "ok", "gamma", "01632960123", decided_at=NOW)
    untimed = Decision("DENY", "invalid-number", "gamma", "0151496012#")

    guard.note_decision(request, timed)
    assert guard.decisions._entries["1796397405.7"][0] == NOW
    guard.note_decision(request, untimed)
    assert guard.decisions._entries["1796397405.7"][0] == NOW + timedelta(seconds=5)
