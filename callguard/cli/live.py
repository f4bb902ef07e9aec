"""``callguardctl status`` and ``callguardctl calls``: live state from the daemon."""

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from callguard.cli.common import EXIT_FAILURE, EXIT_OK
from callguard.text import escape_controls
from callguard.config import Config
from callguard.daemon.control import ASK_TIMEOUT, ask
from callguard.store import Store

# Calls that ``calls`` reads from the store when the daemon cannot be reached.
STORED_CALLS = 50


def query(path: Path, request: dict, timeout: float = ASK_TIMEOUT) -> dict | None:
    """Send ``request`` to the daemon's control socket and return the reply.

    Returns None after printing the reason to stderr when the daemon cannot be
    reached or returns an error. ``timeout`` is in seconds, for the connection
    and again for the reply.
    """
    try:
        reply = asyncio.run(ask(path, request, timeout))
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"cannot reach the callguard daemon at {path}: "
              f"{_failure_reason(exc, timeout)}; is it running, and are you in its group?",
              file=sys.stderr)
        return None
    if "error" in reply:
        print(f"the daemon answered: {escape_controls(reply['error'])}", file=sys.stderr)
        return None
    return reply


def _failure_reason(exc: Exception, timeout: float) -> str:
    """Return the exception's text, or its type when the text is empty, as for a timeout."""
    text = str(exc)
    if text:
        return text
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    return type(exc).__name__


def cmd_status(socket: Path, as_json: bool, timeout: float = ASK_TIMEOUT) -> int:
    reply = query(socket, {"command": "status"}, timeout)
    if reply is None:
        return EXIT_FAILURE
    if as_json:
        print(json.dumps(reply, indent=2))
        return EXIT_OK

    currency = escape_controls(reply["currency"])
    ari = {None: "disabled", True: "connected", False: "DISCONNECTED"}[reply["ari_connected"]]
    print(f"callguard {escape_controls(reply['version'])}, ARI {ari}")
    for name, trunk in reply["trunks"].items():
        print(f"\n[{escape_controls(name)}]")
        for window in ("daily", "weekly"):
            print(_window_line(window, trunk, currency))
        counts = (f"  live calls {len(trunk['live_calls'])}, checks waiting for Dial "
                  f"{trunk['pending_checks']}")
        # A daemon of an earlier release sends no such count.
        elsewhere = trunk.get("other_nodes_calls", 0)
        if elsewhere:
            counts += f", calls and checks on other nodes {elsewhere}"
        print(counts)
        for call in trunk["live_calls"]:
            channel, number = _text(call["channel"]), _text(call["number"], "?")
            print(f"    {channel:<24} {number:<16} {_text(call['state']):<8} "
                  f"{call['duration'] or 0:>6} s {_text(call['cost']):>10}")
    return EXIT_OK


def _window_line(window: str, trunk: dict, currency: str) -> str:
    """Return the spend of one window against its limit, with the percent when defined."""
    spend, limit = trunk[f"{window}_spend"], trunk[f"{window}_limit"]
    if limit is None:
        return f"  {window:<7} {spend} {currency}, no limit"

    line = f"  {window:<7} {spend} of {limit} {currency}"
    # The daemon sends no percent for a limit of 0.
    percent = trunk[f"{window}_percent"]
    if percent is None:
        return line
    return f"{line} ({percent}%)"


def cmd_calls(socket: Path, load_config: Callable[[], Config], live_only: bool,
              as_json: bool, timeout: float = ASK_TIMEOUT) -> int:
    """Print live and recent calls; ``load_config`` is called only to read the store."""
    reply = query(socket, {"command": "calls", "live": live_only}, timeout)
    if reply is None:
        if live_only:
            return EXIT_FAILURE
        print("showing calls from the store instead", file=sys.stderr)
        reply = {"live": [], "recent": _stored_calls(load_config())}

    if as_json:
        print(json.dumps(reply, indent=2))
        return EXIT_OK
    for title, rows in (("live", reply["live"]), ("recent", reply["recent"])):
        if live_only and title == "recent":
            continue
        print(f"{title} calls: {len(rows)}")
        for call in rows:
            print(f"  {_call_line(call)}")
    return EXIT_OK


def _call_line(call: dict) -> str:
    """Return one call of ``calls``: trunk, channel, number, category, duration, cost, end."""
    ended = call.get("hangup_reason") or (
        f"cause {call['hangup_cause']}" if call.get("hangup_cause") is not None else "")
    trunk, channel = _text(call["trunk"]), _text(call["channel"])
    number, category = _text(call["number"], "?"), _text(call["category"], "-")
    return (f"{trunk:<10} {channel:<24} {number:<16} {category:<14} "
            f"{call['duration'] or 0:>6} s {_text(call['cost'], '0.00'):>10} "
            f"{_text(call['state']):<7} {_text(ended)}")


def _text(value: object, missing: str = "") -> str:
    """Return a field of a call, safe for a terminal, or ``missing`` when it is empty.

    Channel names, numbers and hang-up reasons come from calls and peers, so
    their control characters are escaped.
    """
    if value is None or value == "":
        return missing
    return escape_controls(value)


def _stored_calls(config: Config) -> list[dict]:
    store = Store(config.general.database, create_schema=False)
    store.open()
    try:
        records = store.recent_calls(STORED_CALLS)
    finally:
        store.close()
    rows = []
    for record in records:
        duration = None
        if record.answered_at and record.ended_at:
            duration = max(0, int((record.ended_at - record.answered_at).total_seconds()))
        rows.append({
            "uniqueid": record.uniqueid, "trunk": record.trunk, "channel": record.channel,
            "number": record.e164 or record.dialled, "category": record.category,
            "state": record.state, "duration": duration, "cost": str(record.cost),
            "hangup_cause": record.hangup_cause, "hangup_reason": record.hangup_reason,
        })
    return rows
