"""The ``check`` FastAGI script: decide one outbound call and answer in channel variables.

Dialplan: ``AGI(agi://127.0.0.1:4573/check,${EXTEN},gamma)``.
The arguments are the dialled number (default ``agi_extension``), the trunk
(default the channel variable ``CALLGUARD_TRUNK``), the CLI presented on the
trunk (default ``agi_callerid``) and the caller's source address (default the
channel variable ``CALLGUARD_SOURCE``, read only when a trunk sets
``offender_key = source`` or a source address is blocked). AGI() splits its
arguments at each comma of the substituted text, so ``${CALLERID(num)}``,
which a phone may choose, must not come before an argument that matters. A
comma in ``agi_extension`` means the phone dialled one and so chose the
arguments after the number: the check then denies the call as an invalid
number, unless the first argument is an emergency number.
"""

import asyncio
import logging
from typing import Callable, Protocol

from callguard.agi.protocol import AGIChannel, AGIError, AGIHangup
from callguard.agi.server import QuickAnswer
from callguard.agi.variables import (
    CALLGUARD_CATEGORY,
    CALLGUARD_EMERGENCY,
    CALLGUARD_MAXSECS,
    CALLGUARD_RATE,
    CALLGUARD_REASON,
    CALLGUARD_RESULT,
    CALLGUARD_SOURCE,
    CALLGUARD_TRUNK,
    UNKNOWN_CALLER,
)
from callguard.money import format_rate
from callguard.policy.budget import MAX_SECONDS_CEILING
from callguard.policy.decision import (
    ALLOW,
    DENY,
    REASON_FAIL_POLICY,
    REASON_OK,
    REASON_OPTED_OUT,
    REASON_UNKNOWN_TRUNK,
    CallRequest,
    Decision,
)
from callguard.policy.engine import PolicyEngine
from callguard.numbers.errors import quote
from callguard.policy.offenders import KEY_SOURCE, normalise_source
from callguard.repeats import RepeatLimiter, suppressed_note

log = logging.getLogger(__name__)

# Warnings per minute about decisions that could not be returned; further ones
# are counted.
UNDELIVERED_BURST = 20

# Characters of a peer's reply kept in a log line.
MAX_LOGGED_REPLY = 200

# Warnings per minute about checks for a trunk the config does not name.
UNKNOWN_TRUNK_BURST = 5

# [general] log_calls: every check logs its line at INFO.
LOG_CALLS_ALL = "all"
# The reasons of routine allowed checks, whose lines are DEBUG unless
# log_calls is all. An emergency call or a decision by the fail policy
# always logs at INFO.
ROUTINE_REASONS = frozenset({REASON_OK, REASON_OPTED_OUT})
# The key under which checks for no configured trunk are counted, so that
# the names a dialplan sends cannot grow the counts without bound. No trunk
# name can be None.
NO_TRUNK = None
# Trunk names listed in such a warning.
MAX_LISTED_TRUNKS = 10


class DecisionSink(Protocol):
    def record(self, request: CallRequest, decision: Decision) -> None: ...


def decision_variables(decision: Decision) -> list[tuple[str, str]]:
    """Return the channel variables that carry ``decision`` to the dialplan, in order."""
    max_seconds = "" if decision.max_seconds is None else str(decision.max_seconds)
    rate = "" if decision.rate is None else format_rate(decision.rate)
    variables = [
        (CALLGUARD_RESULT, decision.result),
        (CALLGUARD_REASON, decision.reason),
        (CALLGUARD_CATEGORY, decision.category),
        (CALLGUARD_MAXSECS, max_seconds),
        (CALLGUARD_RATE, rate),
    ]
    if decision.emergency_number:
        # First, so that a session cut short after it still routes the call.
        variables.insert(0, (CALLGUARD_EMERGENCY, decision.emergency_number))
    return variables


class CheckHandler:
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        sink: DecisionSink,
    ):
        self._engine = engine
        self._sink = sink
        # A peer that breaks every session must not flood the log.
        self._undelivered = RepeatLimiter(burst=UNDELIVERED_BURST)
        self._unknown_trunks = RepeatLimiter(burst=UNKNOWN_TRUNK_BURST)
        # (trunk, result) -> checks decided since the last summary.
        self._counts: dict[tuple[str | None, str], int] = {}

    async def __call__(self, channel: AGIChannel) -> None:
        engine = self._engine()
        emergency = self._emergency_first(channel, engine)
        if emergency is not None:
            await self._answer(engine, channel, *emergency)
            return
        request = await self._request(channel, engine)
        general = engine.state.config.general

        try:
            decision = engine.decide_now(request)
            if decision is None:
                async with asyncio.timeout(general.decision_timeout):
                    decision = await engine.decide(request)
        except TimeoutError:
            decision = self._fail_policy(engine, request, "timed out")
        except Exception:
            log.exception("%s: the decision failed", quote(request.uniqueid or "-"))
            decision = self._fail_policy(engine, request, "failed")
        await self._answer(engine, channel, request, decision)

    async def _answer(self, engine: PolicyEngine, channel: AGIChannel, request: CallRequest,
                      decision: Decision) -> None:
        """Log ``decision``, record it and set its channel variables."""
        self._announce(engine, request, decision)

        answered_before = channel.answered
        try:
            await channel.set_variables(decision_variables(decision))
        except AGIError as exc:
            self._returned(engine, channel, request, decision, exc, answered_before)
            return
        self._returned(engine, channel, request, decision, None, answered_before)

    def answer_now(self, channel: AGIChannel) -> QuickAnswer | None:
        """Decide without waiting, when nothing needs a round trip or a store read.

        The FastAGI server then sets the variables without a task. None
        sends the session through __call__.
        """
        engine = self._engine()
        arguments = channel.arguments
        trunk = _argument(arguments, 1)
        source = _argument(arguments, 3)
        if not trunk or not source and _uses_source(engine) or _split_extension(channel):
            emergency = self._emergency_first(channel, engine)
            if emergency is None:
                return None  # a GET VARIABLE first
            request, decision = emergency
        else:
            request = _call_request(channel, arguments, trunk, source)
            try:
                decision = engine.decide_now(request)
            except Exception:
                log.exception("%s: the decision failed", quote(request.uniqueid or "-"))
                decision = self._fail_policy(engine, request, "failed")
        if decision is None:
            return None

        def announce() -> None:
            self._announce(engine, request, decision)

        def returned(error: AGIError | None) -> None:
            self._returned(engine, channel, request, decision, error, 0)

        return QuickAnswer(decision_variables(decision), returned, announce)

    @staticmethod
    def _emergency_first(channel: AGIChannel,
                         engine: PolicyEngine) -> tuple[CallRequest, Decision] | None:
        """Return the request and decision of an emergency call, from the arguments alone.

        Reading a missing trunk or source address costs a round trip to
        Asterisk, and a bad reply to it would end the session before
        CALLGUARD_EMERGENCY is set. An emergency call needs neither.
        """
        arguments = channel.arguments
        # The first argument counts even when a comma split the extension,
        # because the emergency route dials only the emergency number.
        request = _call_request(channel, arguments, _argument(arguments, 1),
                                _argument(arguments, 3), whole_extension=False)
        try:
            decision = engine.emergency_decision(request)
        except Exception:
            # The full decision runs next and reports the failure.
            return None
        return None if decision is None else (request, decision)

    def _announce(self, engine: PolicyEngine, request: CallRequest, decision: Decision) -> None:
        """Log the decision and hand it to the sink, before the dialplan learns it.

        A sink that fails is logged and does not change the decision, which
        Asterisk may already have begun to receive.
        """
        config = engine.state.config
        trunk = request.trunk if request.trunk in config.trunks else NO_TRUNK
        key = (trunk, decision.result)
        self._counts[key] = self._counts.get(key, 0) + 1
        if (decision.result == ALLOW and decision.reason in ROUTINE_REASONS
                and config.general.log_calls != LOG_CALLS_ALL):
            # A line per routine call would flood the journal on a busy PBX;
            # summarise() counts them, and the audit trail keeps each one.
            level = logging.DEBUG
        else:
            level = logging.INFO
        if log.isEnabledFor(level):
            # The dialled string and the caller ID come from the phone: quote()
            # keeps a line break or a terminal escape in them from reaching the
            # log raw, and cuts a string long enough to flood it.
            log.log(
                level, "%s %s: %s %s to %s (%s) from %s",
                quote(request.trunk or "-"), quote(request.uniqueid or "-"), decision.result,
                decision.reason, decision.e164 or quote(request.dialled),
                decision.category or "-", quote(request.caller or "unknown"),
            )
        try:
            self._sink.record(request, decision)
        except Exception:
            log.exception("%s: failed to record the decision %s %s",
                          quote(request.uniqueid or "-"), decision.result, decision.reason)
        if decision.reason == REASON_UNKNOWN_TRUNK:
            self._warn_unknown_trunk(engine, request)

    def summarise(self, period: str) -> None:
        """Log how many checks each trunk allowed and denied, and start counting again.

        ``period`` names the time counted, as in "in the last minute". Nothing
        is logged when there were no checks.
        """
        counts, self._counts = self._counts, {}
        if not counts:
            return
        trunks = sorted({trunk for trunk, _ in counts},
                        key=lambda name: (name is NO_TRUNK, name or ""))
        parts = []
        for trunk in trunks:
            allowed = counts.get((trunk, ALLOW), 0)
            denied = counts.get((trunk, DENY), 0)
            name = "no configured trunk" if trunk is NO_TRUNK else trunk
            parts.append(f"{name} {allowed} allowed, {denied} denied")
        log.info("checks %s: %s", period, "; ".join(parts))

    def _warn_unknown_trunk(self, engine: PolicyEngine, request: CallRequest) -> None:
        """Tell the sysadmin how to fix a dialplan that names no configured trunk.

        Every call it checks is denied, so the mistake stops all outbound calls.
        """
        suppressed = self._unknown_trunks.admit()
        if suppressed is None:
            return
        config = engine.state.config
        names = sorted(config.trunks)
        listed = ", ".join(names[:MAX_LISTED_TRUNKS]) or "none"
        if len(names) > MAX_LISTED_TRUNKS:
            listed += f" and {len(names) - MAX_LISTED_TRUNKS} more"
        if not request.trunk:
            problem = ("the check got no trunk: give it as the second argument of "
                       "AGI() or set the channel variable CALLGUARD_TRUNK")
        else:
            trunk_name = request.trunk if len(request.trunk) <= 64 else request.trunk[:64] + "..."
            problem = (f"{config.path} has no [trunk {trunk_name}], so every call checked "
                       "for it is denied")
            alike = [name for name in names if name.lower() == request.trunk.lower()]
            if alike:
                problem += f"; did you mean {alike[0]!r}? Trunk names are case-sensitive"
        log.warning("%s %s: %s; trunks configured: %s%s", quote(request.trunk or "-"),
                    quote(request.uniqueid or "-"), problem, listed,
                    suppressed_note(suppressed))

    def _returned(self, engine: PolicyEngine, channel: AGIChannel, request: CallRequest,
                  decision: Decision, error: AGIError | None, answered_before: int) -> None:
        """Finish after the result variables were set, or failed to be."""
        if error is not None:
            delivered = channel.answered - answered_before
            released = ""
            if (channel.hung_up or delivered == 0 and isinstance(error, AGIHangup)) \
                    and self._release(engine, request, decision):
                released = "; released its reservation"
            suppressed = self._undelivered.admit()
            if suppressed is not None:
                log.warning("%s: could not return the decision (%s); the dialplan applies "
                            "its fail policy%s%s", quote(request.uniqueid or "-"),
                            _shortened(str(error)), released, suppressed_note(suppressed))
            return
        if channel.hung_up and self._release(engine, request, decision):
            log.info("%s: the channel hung up during the check; released its reservation",
                     quote(request.uniqueid or "-"))

    @staticmethod
    def _release(engine: PolicyEngine, request: CallRequest, decision: Decision) -> bool:
        """Release the decision's reservation, if it holds one; return whether it did.

        A channel that hung up, or was gone before its result was set, dials
        nothing, so the hold would only block later calls until it expired.
        """
        if not decision.reserved:
            return False
        engine.reservations.release(request.uniqueid)
        return True

    async def _request(self, channel: AGIChannel, engine: PolicyEngine) -> CallRequest:
        arguments = channel.arguments

        trunk = _argument(arguments, 1)
        if not trunk:
            trunk = await channel.get_variable(CALLGUARD_TRUNK) or ""
        source = _argument(arguments, 3)
        if not source and _uses_source(engine):
            source = await channel.get_variable(CALLGUARD_SOURCE) or ""
        return _call_request(channel, arguments, trunk, source)

    def _fail_policy(self, engine: PolicyEngine, request: CallRequest, what: str) -> Decision:
        config = engine.state.config
        result = ALLOW if config.general.fail_policy == "allow" else DENY
        log.error(
            "%s %s: the decision %s; returning %s by fail_policy",
            quote(request.trunk or "-"), quote(request.uniqueid or "-"), what, result,
        )

        # An allowed call still gets a finite limit, because Dial() sets no
        # limit for an empty S() and the dialplan applies its fail policy to an
        # ALLOW without a positive limit.
        max_seconds = None
        if result == ALLOW:
            trunk = config.trunks.get(request.trunk)
            cap = trunk.max_call_seconds if trunk is not None else None
            max_seconds = min(cap or MAX_SECONDS_CEILING, MAX_SECONDS_CEILING)
        return Decision(result, REASON_FAIL_POLICY, request.trunk, request.dialled,
                        max_seconds=max_seconds, detail=f"the decision {what}")


def _call_request(channel: AGIChannel, arguments: list[str], trunk: str,
                  source: str, *, whole_extension: bool = True) -> CallRequest:
    """Build the request from the session's ``arguments`` and environment.

    With ``whole_extension``, an ``agi_extension`` that contains a comma is the
    dialled string, whatever the first argument is.
    """
    env = channel.env
    extension = env.get("agi_extension", "")
    if whole_extension and _split_extension(channel):
        # AGI() split the arguments at the commas of a substituted ${EXTEN},
        # so the phone chose the ones after the number. The whole extension
        # is checked instead, and a comma makes it an invalid number.
        dialled = extension
    else:
        dialled = _argument(arguments, 0) or extension
    caller = _argument(arguments, 2) or env.get("agi_callerid", "")
    if caller.lower() == UNKNOWN_CALLER:
        caller = ""
    return CallRequest(
        trunk=trunk.strip(),
        dialled=dialled,
        caller=caller,
        uniqueid=channel.uniqueid,
        channel=channel.channel,
        accountcode=env.get("agi_accountcode", ""),
        source=normalise_source(source),
    )


def _split_extension(channel: AGIChannel) -> bool:
    """Check whether the dialled extension contains a comma, at which AGI() split it."""
    return "," in channel.env.get("agi_extension", "")


def _uses_source(engine: PolicyEngine) -> bool:
    """Check whether any trunk counts offenders by source address, or any address is blocked.

    Reading the variable costs a round trip to Asterisk, so the check skips it
    otherwise. A block on an address, set by hand or kept from a time when a
    trunk counted by source, applies to every trunk, so it needs the read too.
    """
    if engine.state.source_offenders:
        return True
    return bool(engine.blocks) and engine.blocks.has_type(KEY_SOURCE, engine.clock.now())


def _shortened(text: str) -> str:
    """Cut a peer's reply, such as a 520 usage text, for a log line."""
    if len(text) <= MAX_LOGGED_REPLY:
        return text
    return f"{text[:MAX_LOGGED_REPLY]}... ({len(text)} characters)"


def _argument(arguments: list[str], index: int) -> str:
    if index < len(arguments):
        return arguments[index].strip()
    return ""
