"""``callguardctl audit``: decisions, blocks, hang-ups, resets and reloads, newest first."""

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from callguard.cli.common import EXIT_CONFIG, EXIT_OK, read_config, row_limit
from callguard.text import escape_controls
from callguard.config.errors import InvalidValue
from callguard.config.durations import parse_signed_seconds
from callguard.store import AuditTrail, Store
from callguard.store.audit import Renewal, read_renewal
from callguard.urls import mask_url

DEFAULT_SINCE = "1d"
SINCE_EXAMPLES = "2h, 1d or 2024-06-14T09:00+01:00"
DEFAULT_LIMIT = 200
KIND_DECISION = "decision"
KIND_BLOCK = "block"
KIND_HANGUP = "hangup"


@dataclass(frozen=True)
class Event:
    """One line of the audit listing."""

    at: datetime
    kind: str  # decision, block, hangup, or an audit action (unblock, reset, ...)
    actor: str
    subject: str
    summary: str


def parse_since(text: str, now: datetime) -> datetime:
    """Parse ``--since``: a duration back from ``now`` (``2h``, ``1d``) or an ISO time.

    An ISO time without an offset is taken as UTC. Returns the moment in UTC.
    Raises ``ValueError`` for anything else, for a duration of zero or less, and
    for a moment that UTC cannot hold (before the year 1 or after 9999).
    """
    try:
        seconds = parse_signed_seconds(text, SINCE_EXAMPLES)
    except InvalidValue:
        seconds = None
    if seconds is not None:
        if seconds <= 0:
            # Every other duration of callguardctl and the config must be
            # longer than zero too.
            raise ValueError(
                f"{text!r} must be longer than zero, because the listing starts "
                f"that long before now; write it like {SINCE_EXAMPLES}"
            )
        try:
            return now - timedelta(seconds=float(seconds))
        except OverflowError:
            raise ValueError(
                f"{text!r} reaches back before the year 1; give a shorter duration, "
                "like 30d"
            ) from None

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration nor an ISO time; write it like "
            f"{SINCE_EXAMPLES}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(
            f"{text!r} is outside the years 1 to 9999 in UTC; give a time within them"
        ) from None


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command to ``callguardctl``."""
    audit = commands.add_parser("audit", help="decisions, blocks, hang-ups, spend resets "
                                "and config reloads, newest first")
    audit.add_argument("--since", default=DEFAULT_SINCE, metavar="DURATION|ISO-TIME",
                       help=f"start of the listing, like 2h or 2024-06-14T09:00+01:00 "
                       f"(default {DEFAULT_SINCE}); a time without an offset is UTC, "
                       "like the times that it prints")
    audit.add_argument("--limit", type=row_limit, default=DEFAULT_LIMIT, metavar="N",
                       help=f"show at most N entries (default {DEFAULT_LIMIT})")
    audit.add_argument("--json", action="store_true", help="print one JSON array")


def cmd_audit(args: argparse.Namespace) -> int:
    config = read_config(args)
    try:
        since = parse_since(args.since, datetime.now(timezone.utc))
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with Store(config.general.database, create_schema=False) as store:
        trail = store.audit_trail(since, args.limit)
    events = merge_events(trail)[: args.limit]

    if args.json:
        print(json.dumps([asdict(event) | {"at": event.at.isoformat()} for event in events],
                         indent=2))
        return EXIT_OK
    if not events:
        print(f"nothing since {since.isoformat(timespec='seconds')}")
    for event in events:
        print(format_event(event))
    return EXIT_OK


def format_event(event: Event) -> str:
    """Return ``event`` as one line of the listing, its text safe for a terminal.

    Subjects and summaries carry dialled numbers, caller IDs and channel names,
    which callers choose.
    """
    at = event.at.isoformat(timespec="seconds")
    kind, actor = escape_controls(event.kind), escape_controls(event.actor)
    subject, summary = escape_controls(event.subject), escape_controls(event.summary)
    return f"{at}  {kind:<8} {actor:<10} {subject:<28} {summary}"


def merge_events(trail: AuditTrail) -> list[Event]:
    """Turn every record of ``trail`` into an ``Event``, newest first."""
    events = [
        Event(d.decided_at, KIND_DECISION, d.node or "callguard",
              f"{d.trunk} {d.e164 or d.dialled}",
              f"{d.result} {d.reason} from {d.caller or 'unknown'} on {d.channel or '-'}")
        for d in trail.decisions
    ]
    events.extend(_block_events(trail))
    for hangup in trail.hangups:
        events.append(Event(hangup.requested_at, KIND_HANGUP, "callguard",
                            f"{hangup.trunk} {hangup.number or '-'}",
                            f"{hangup.reason} on {hangup.channel} ({hangup.outcome}), "
                            f"call cost {hangup.call_cost}"))
    for change in trail.changes:
        # A failed reload's detail has one line per config error. Rows that
        # older versions stored may quote a URL with its password unmasked.
        detail = "; ".join(mask_url(line) for line in change.detail.splitlines()
                           if line.strip())
        summary = f"{detail}: {change.reason}" if detail and change.reason else (
            detail or change.reason)
        events.append(Event(change.at, change.action, change.actor, change.subject,
                            summary))

    events.sort(key=lambda event: event.at, reverse=True)
    return events


def _block_events(trail: AuditTrail) -> list[Event]:
    """Return an event for each block that has no audit entry of its creation.

    Those are the automatic blocks. An operator's block has such an entry, which
    is listed in its place. A renewal rewrites the block's row with its own
    reason and expiry, so a renewed block is shown with the reason and expiry
    that its first renewal entry records as replaced.
    """
    created = {(change.at, change.subject) for change in trail.changes
               if change.action == KIND_BLOCK and read_renewal(change) is None}
    # trail.changes is newest first, so the oldest renewal of each block is kept.
    first_renewals: dict[int, Renewal] = {}
    for change in reversed(trail.changes):
        renewal = read_renewal(change)
        if renewal is not None:
            first_renewals.setdefault(renewal.block_id, renewal)

    events = []
    for block in trail.blocks:
        subject = f"{block.key_type} {block.key}"
        if (block.created_at, subject) in created:
            continue
        expires_at, reason = block.expires_at, block.reason
        renewal = first_renewals.get(block.id)
        if renewal is not None:
            expires_at, reason = renewal.previous_expires_at, renewal.previous_reason
        until = "until unblocked" if expires_at is None else (
            f"until {expires_at.isoformat(timespec='seconds')}")
        events.append(Event(block.created_at, KIND_BLOCK, block.created_by, subject,
                            f"block {block.id} {until}: {reason}"))
    return events
