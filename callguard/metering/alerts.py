"""When to alert the sysadmin, and what each message contains.

Warnings: when a trunk's spend in a window reaches one of its ``warn_percent``
levels, one alert for the highest level reached (a jump past two levels sends
the higher only). Each alert carries a key of trunk, window and level, so the
outbox sends it once per window, also across restarts. A limit that bites, a
call hung up because it skipped the check, and ARI unreachable for too long
are alerted too.
"""

import logging
import shlex
from datetime import datetime
from decimal import Decimal
from typing import Callable, Iterable

from callguard.config import Config, TrunkConfig
from callguard.metering.charges import elapsed_seconds
from callguard.metering.legs import Leg
from callguard.money import format_amount
from callguard.notify import Alert
from callguard.policy.ledger import Ledger
from callguard.store.records import BlockChange
from callguard.windows import DAY, WEEK, window_keys

log = logging.getLogger(__name__)

WINDOW_NAMES = {DAY: "daily", WEEK: "weekly"}
TOP_DESTINATIONS = 5
MORE = "More: callguardctl status; callguardctl calls; callguardctl alerts"


class AlertRaiser:
    def __init__(self, submit: Callable[[Alert], None], config: Config, ledger: Ledger):
        self.submit = submit
        self.config = config
        self.ledger = ledger
        # The highest level alerted per (trunk, window, key), so a level is
        # raised once; the outbox's dedupe key covers restarts.
        self._alerted: dict[tuple[str, str, str], int] = {}
        self._limits: set[tuple[str, str, str]] = set()
        # Per (trunk, window, key) reset by the operator, the reset's time,
        # which makes the alerts after it new to the outbox.
        self._resets: dict[tuple[str, str, str], str] = {}

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def spend_reset(self, trunk: str, window: str, key: str, at: datetime) -> None:
        """Send the window's warnings and limit alert again as its spend climbs anew.

        NOTE: only this daemon learns of the reset, and only until it
        restarts; after a restart the outbox takes the window's alerts as
        sent already.
        """
        window_id = (trunk, window, key)
        self._alerted.pop(window_id, None)
        self._limits.discard(window_id)
        self._resets[window_id] = at.strftime("%Y%m%dT%H%M%S")

    def _dedupe_suffix(self, trunk: str, window: str, key: str) -> str:
        stamp = self._resets.get((trunk, window, key))
        return "" if stamp is None else f":reset-{stamp}"

    # Warnings.

    def pending_threshold(self, trunk: TrunkConfig, window: str, key: str) -> Decimal | None:
        """Return the spend at which the next warning level of this window is reached."""
        limit = trunk.daily_limit if window == DAY else trunk.weekly_limit
        if not limit or not trunk.warn_percent:
            # A zero limit refuses every call from the start, so no warning comes first.
            return None
        done = self._alerted.get((trunk.name, window, key), 0)
        levels = [level for level in sorted(trunk.warn_percent) if level > done]
        if not levels:
            return None
        return limit * levels[0] / 100

    def check_spend(self, trunk: TrunkConfig, now: datetime, legs: Iterable[Leg]) -> None:
        keys = window_keys(now, trunk.timezone)
        for window in (DAY, WEEK):
            limit = trunk.daily_limit if window == DAY else trunk.weekly_limit
            spent = self.ledger.spent(trunk.name, window, keys[window])
            if not limit or spent is None or not trunk.warn_percent:
                continue
            reached = [level for level in trunk.warn_percent if spent * 100 >= limit * level]
            if not reached:
                continue
            level = max(reached)
            alerted_key = (trunk.name, window, keys[window])
            if level <= self._alerted.get(alerted_key, 0):
                continue
            self._alerted[alerted_key] = level
            self._warn(trunk, window, keys[window], level, spent, limit, legs)

    def _warn(self, trunk: TrunkConfig, window: str, key: str, level: int, spent: Decimal,
              limit: Decimal, legs: Iterable[Leg]) -> None:
        currency = self.config.general.currency
        name = WINDOW_NAMES[window]
        amounts = f"{format_amount(spent)} of {format_amount(limit)} {currency}"
        if spent >= limit:
            # A reload can lower the limit below what was already spent, and the
            # warning level then comes with the spend past the limit itself.
            subject = f"[callguard] {trunk.name}: {name} spend over the limit ({amounts})"
            crossed = (f"The {name} spend is at or over the limit, as after a lower limit "
                       f"was loaded; the warning level was {level}%.")
        else:
            subject = f"[callguard] {trunk.name}: {name} spend {level}% ({amounts})"
            crossed = f"The {name} spend crossed the warning level of {level}%."
        body = self._body(trunk, window, key, spent, limit, legs, crossed)
        log.warning("%s: %s spend %s reached the warning level of %d%%%s", trunk.name, name,
                    amounts, level, " and the limit" if spent >= limit else "")
        self.submit(Alert(
            kind="warning", trunk=trunk.name, subject=subject, body=body,
            data=self._data(trunk, window, key, spent, limit) | {"level": level},
            dedupe_key=(f"warning:{trunk.name}:{window}:{key}:{level}"
                        + self._dedupe_suffix(trunk.name, window, key)),
            recipients=trunk.notify,
        ))

    # A limit that bites.

    def limit_reached(self, trunk: TrunkConfig, window: str, now: datetime, action: str,
                      legs: Iterable[Leg]) -> None:
        """Alert once per window that its limit bites; ``action`` describes what callguard did."""
        key = window_keys(now, trunk.timezone)[window]
        if (trunk.name, window, key) in self._limits:
            return
        self._limits.add((trunk.name, window, key))
        limit = trunk.daily_limit if window == DAY else trunk.weekly_limit
        spent = self.ledger.spent(trunk.name, window, key) or Decimal(0)
        currency = self.config.general.currency
        name = WINDOW_NAMES[window]
        subject = (f"[callguard] {trunk.name}: {name} limit reached "
                   f"({format_amount(spent)} of {format_amount(limit)} {currency})")
        body = self._body(trunk, window, key, spent, limit, legs,
                          f"The {name} limit bites: the budget cannot pay the next "
                          f"billing block.\nWhat callguard did: {action}")
        self.submit(Alert(
            kind="limit", trunk=trunk.name, subject=subject, body=body,
            data=self._data(trunk, window, key, spent, limit) | {"action": action},
            dedupe_key=(f"limit:{trunk.name}:{window}:{key}"
                        + self._dedupe_suffix(trunk.name, window, key)),
            recipients=trunk.notify,
        ))

    # Other alerts.

    def unguarded_hangup(self, trunk: TrunkConfig, leg: Leg, reason: str) -> None:
        number = leg.e164 or leg.number or "an unknown number"
        subject = (f"[callguard] {trunk.name}: hung up a call that skipped the check "
                   f"({number}, {reason})")
        body = "\n".join([
            f"Trunk:   {trunk.name}",
            f"Channel: {leg.channel}",
            f"Number:  {number} ({leg.category or 'unknown category'})",
            f"Reason:  {reason}",
            "",
            "The call reached the trunk without passing callguard's check (a transfer, a "
            "call forward, an originate, or a context without the dialplan snippet) and "
            "its destination is barred, so callguard hung it up.",
            "",
            MORE,
        ])
        self.submit(Alert(
            kind="unguarded", trunk=trunk.name, subject=subject, body=body,
            data={"trunk": trunk.name, "channel": leg.channel, "uniqueid": leg.id,
                  "number": number, "category": leg.category, "reason": reason},
            dedupe_key=f"unguarded:{leg.id}", recipients=trunk.notify,
        ))

    def block_imposed(self, block_id: int, key_type: str, key: str, trunk: str,
                      reason: str, at: datetime, expires_at: datetime,
                      earlier: int, renewal: BlockChange | None = None) -> None:
        """Alert that callguard blocked an offender; sent once per block id.

        ``renewal`` is the change when callguard renewed a block that was
        active already, which is then alerted once per renewal. The block then
        holds until the later of its own end and ``expires_at``, which the
        subject and the data give.
        """
        holds_until: datetime | None = expires_at
        dedupe_key = f"block:{block_id}"
        renewal_lines = []
        if renewal is not None:
            holds_until = renewal.block.expires_at
            dedupe_key = f"block:{block_id}:renewed:{at.isoformat()}"
            renewal_lines = _renewal_lines(renewal)
        until = ("unblocked" if holds_until is None
                 else holds_until.isoformat(timespec="seconds"))
        subject = f"[callguard] blocked {key_type} {key} until {until}"
        body = "\n".join([
            f"callguard blocked {key_type} {key} from all outbound calls.",
            "",
            f"Why:     {reason}",
            f"From:    {at.isoformat(timespec='seconds')}",
            f"Until:   {until}",
            f"Earlier: {earlier} automatic block{'s' if earlier != 1 else ''} of this "
            "key within ban_max_time",
            *renewal_lines,
            "",
            "Emergency calls are still allowed. If this is a false alarm, lift the block:",
            f"  callguardctl unblock {shlex.quote(key)} --type {key_type} --reason TEXT",
            "",
            MORE,
        ])
        recipients = ()
        trunk_config = self.config.trunks.get(trunk)
        if trunk_config is not None:
            recipients = trunk_config.notify
        self.submit(Alert(
            kind="block", trunk=trunk, subject=subject, body=body,
            data={"block_id": block_id, "key_type": key_type, "key": key,
                  "reason": reason, "created_at": at.isoformat(),
                  "expires_at": None if holds_until is None else holds_until.isoformat(),
                  "earlier_blocks": earlier},
            dedupe_key=dedupe_key, recipients=recipients,
        ))

    def ari_unreachable(self, since: datetime, now: datetime) -> None:
        minutes = int(elapsed_seconds(since, now) // 60)
        subject = f"[callguard] ARI unreachable for {minutes} minutes"
        body = "\n".join([
            "callguard has not been connected to Asterisk's ARI since "
            f"{since.isoformat(timespec='seconds')}.",
            "Live calls are not metered or hung up until it reconnects; the dialplan's S() "
            "limit still ends each call, and new calls are still checked.",
            "",
            "Check that Asterisk runs, that ARI is enabled in ari.conf and http.conf, and "
            "the credentials in callguard.conf.",
            "",
            MORE,
        ])
        self.submit(Alert(
            kind="ari-down", trunk=None, subject=subject, body=body,
            data={"since": since.isoformat(), "minutes": minutes},
            dedupe_key=f"ari-down:{since.isoformat()}",
        ))

    # Message parts.

    def _data(self, trunk: TrunkConfig, window: str, key: str, spent: Decimal,
              limit: Decimal | None) -> dict:
        return {
            "trunk": trunk.name, "window": window, "key": key,
            "spend": format_amount(spent),
            "limit": None if limit is None else format_amount(limit),
            "currency": self.config.general.currency,
        }

    def _body(self, trunk: TrunkConfig, window: str, key: str, spent: Decimal,
              limit: Decimal | None, legs: Iterable[Leg], headline: str) -> str:
        currency = self.config.general.currency
        legs = list(legs)
        percent = "" if not limit else f" ({(spent * 100 / limit).quantize(Decimal('0.1'))}%)"
        lines = [
            headline,
            "",
            f"Trunk:  {trunk.name}",
            f"Window: {WINDOW_NAMES[window]} {key} ({trunk.timezone.key})",
            f"Spend:  {format_amount(spent)} {currency}",
            f"Limit:  {'none' if limit is None else format_amount(limit)} {currency}{percent}",
            "",
            "Top destinations in this window by cost:",
        ]
        lines += _top_destinations(legs, window, key, currency) or ["  (none)"]
        lines += ["", "Live calls:"]
        live = [leg for leg in legs if leg.live]
        lines += [_live_line(leg, currency) for leg in live] or ["  (none)"]
        lines += ["", MORE]
        return "\n".join(lines)


def _window_cost(leg: Leg, window: str, key: str) -> Decimal:
    charges = leg.final_charges if not leg.live else (
        leg.answered.charges if leg.answered else {})
    return charges.get((window, key), Decimal(0))


def _top_destinations(legs: list[Leg], window: str, key: str, currency: str) -> list[str]:
    totals: dict[str, tuple[Decimal, int, str]] = {}
    for leg in legs:
        cost = _window_cost(leg, window, key)
        if not cost:
            continue
        number = leg.e164 or leg.number or "unknown"
        total, calls, category = totals.get(number, (Decimal(0), 0, leg.category))
        totals[number] = (total + cost, calls + 1, category)
    ranked = sorted(totals.items(), key=lambda item: item[1][0], reverse=True)
    return [f"  {number:<16} {category or '-':<16} {format_amount(total):>10} {currency} "
            f"({calls} call{'s' if calls != 1 else ''})"
            for number, (total, calls, category) in ranked[:TOP_DESTINATIONS]]


def _live_line(leg: Leg, currency: str) -> str:
    cost = leg.answered.total if leg.answered else Decimal(0)
    return (f"  {leg.channel:<24} {leg.e164 or leg.number or '?':<16} {leg.state:<8} "
            f"{format_amount(cost):>10} {currency}")


def _renewal_lines(renewal: BlockChange) -> list[str]:
    """Return the lines of a block alert about the active block that it renewed."""
    previous, block = renewal.previous, renewal.block
    until = ("until unblocked" if block.expires_at is None
             else f"until {block.expires_at.isoformat(timespec='seconds')}")
    return [
        f"Renews:  block {block.id}, set by {previous.created_by} at "
        f"{previous.created_at.isoformat(timespec='seconds')}: "
        f"{previous.creation_reason}",
        f"Holds:   {until}, the later of the two ends",
    ]
