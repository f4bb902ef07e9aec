"""``callguardctl blocks``, ``block``, ``unblock`` and ``reset``: operator controls.

Each change goes to the store with its reason and an audit entry first, then to
the running daemon over the control socket. Without a daemon the change applies
at its next start.
"""

import argparse
import asyncio
import getpass
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from callguard.cli.common import EXIT_CONFIG, EXIT_OK, read_config
from callguard.config import Config
from callguard.config.errors import InvalidValue
from callguard.config.offenders import (
    KEY_CALLER,
    KEY_ENDPOINT,
    KEY_SOURCE,
    OFFENDER_KEYS,
    parse_ban_duration,
)
from callguard.daemon.control import ask
from callguard.numbers.plan import NumberPlan
from callguard.policy.offenders import normalise_source
from callguard.store import Store
from callguard.windows import DAY, WEEK, window_keys

UNKNOWN_ACTOR = "unknown"


def _duration(text: str) -> int:
    try:
        return parse_ban_duration(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``blocks``, ``block``, ``unblock`` and ``reset`` to ``callguardctl``."""
    blocks = commands.add_parser("blocks", help="active blocks, from the store")
    blocks.add_argument("--json", action="store_true", help="print one JSON array")

    block = commands.add_parser("block", help="block a caller from all outbound calls "
                                "(emergency calls stay allowed)")
    block.add_argument("key", metavar="CALLER", help="the endpoint, number, account "
                       "code or address to block")
    block.add_argument("--for", dest="duration", type=_duration, metavar="DURATION",
                       help="how long, like 30m, 2h, 1d or 1w (default: until unblocked)")
    block.add_argument("--reason", required=True, help="why, kept in the audit trail")
    _add_type(block)

    unblock = commands.add_parser("unblock", help="lift every active block on a caller")
    unblock.add_argument("key", metavar="CALLER", help="the blocked key")
    unblock.add_argument("--reason", required=True, help="why, kept in the audit trail")
    _add_type(unblock)

    reset = commands.add_parser("reset", help="clear a trunk's spend in the current day "
                                "or week, e.g. after a false alarm")
    reset.add_argument("trunk", help="the trunk section name")
    reset.add_argument("--window", required=True, choices=(DAY, WEEK),
                       help="the window to clear, in the trunk's time zone")
    reset.add_argument("--reason", required=True, help="why, kept in the audit trail")


def _add_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", dest="key_type", choices=OFFENDER_KEYS,
                        default=KEY_ENDPOINT,
                        help=f"what CALLER is (default: {KEY_ENDPOINT})")


def cmd_blocks(args: argparse.Namespace) -> int:
    config = read_config(args)
    with Store(config.general.database) as store:
        active = store.active_blocks(datetime.now(timezone.utc))

    if args.json:
        print(json.dumps([_block_data(record) for record in active], indent=2))
        return EXIT_OK
    if not active:
        print("no active blocks")
    for record in active:
        until = "until unblocked" if record.expires_at is None else (
            f"until {record.expires_at.isoformat(timespec='seconds')}")
        print(f"{record.id:>6} {record.key_type:<11} {record.key:<20} {until:<32} "
              f"by {record.created_by}: {record.reason}")
    return EXIT_OK


def cmd_block(args: argparse.Namespace) -> int:
    config = read_config(args)
    key = normalise_key(config, args.key_type, args.key)
    if key is None:
        return EXIT_CONFIG

    now = datetime.now(timezone.utc)
    expires_at = None if args.duration is None else now + timedelta(seconds=args.duration)
    with Store(config.general.database) as store:
        block_id = store.block_manually(args.key_type, key, args.reason, now, expires_at,
                                        _actor())
    until = "until unblocked" if expires_at is None else f"until {expires_at.isoformat()}"
    print(f"blocked {args.key_type} {key} {until} (block {block_id})")

    _tell_daemon(config, {"command": "block", "key_type": args.key_type, "key": key,
                          "expires_at": None if expires_at is None else
                          expires_at.isoformat()})
    return EXIT_OK


def cmd_unblock(args: argparse.Namespace) -> int:
    config = read_config(args)
    key = normalise_key(config, args.key_type, args.key)
    if key is None:
        return EXIT_CONFIG

    with Store(config.general.database) as store:
        lifted = store.unblock_manually(args.key_type, key, args.reason,
                                        datetime.now(timezone.utc), _actor())
    print(f"lifted {lifted} active block{'s' if lifted != 1 else ''} on "
          f"{args.key_type} {key}")

    _tell_daemon(config, {"command": "unblock", "key_type": args.key_type, "key": key})
    return EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    config = read_config(args)
    trunk = config.trunks.get(args.trunk)
    if trunk is None:
        print(f"trunk {args.trunk!r} is not in {config.path}; use one of "
              f"{', '.join(sorted(config.trunks))}", file=sys.stderr)
        return EXIT_CONFIG

    now = datetime.now(timezone.utc)
    key = window_keys(now, trunk.timezone)[args.window]
    with Store(config.general.database) as store:
        cleared = store.reset_spend(trunk.name, args.window, key, args.reason, now,
                                    _actor())
    print(f"cleared {cleared} {config.general.currency} from trunk {trunk.name}, "
          f"{args.window} {key}; live calls keep adding their cost")

    _tell_daemon(config, {"command": "reset", "trunk": trunk.name})
    return EXIT_OK


def normalise_key(config: Config, key_type: str, text: str) -> str | None:
    """Return ``text`` in the form the daemon compares for ``key_type``, None if invalid.

    A caller becomes E.164 in the config's home country, and a source loses its port.
    """
    text = text.strip()
    if key_type == KEY_SOURCE:
        return normalise_source(text)
    if key_type != KEY_CALLER:
        return text

    general = config.general
    plan = NumberPlan(general.home_country, general.outside_line_prefix,
                      general.emergency_numbers)
    e164 = plan.normalise_caller(text)
    if e164 is None:
        print(f"{text!r} is not a calling number; write it in national form or E.164, "
              "like 01632960010 or +441632960010", file=sys.stderr)
    return e164


def _tell_daemon(config: Config, request: dict) -> bool:
    """Apply a stored change to the running daemon; returns True when it did."""
    path = Path(config.general.control_socket)
    if not path.exists():
        print(f"callguard is not running (no control socket at {path}); the change "
              "applies at its next start")
        return False

    try:
        reply = asyncio.run(ask(path, request))
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"could not reach the callguard daemon at {path} ({exc}); the change is "
              "stored and applies at its next start", file=sys.stderr)
        return False
    if "error" in reply:
        print(f"the daemon answered: {reply['error']}; the change is stored and "
              "applies at its next start", file=sys.stderr)
        return False
    print("applied to the running daemon")
    return True


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return UNKNOWN_ACTOR


def _block_data(record) -> dict:
    return {
        "id": record.id,
        "key_type": record.key_type,
        "key": record.key,
        "reason": record.reason,
        "created_at": record.created_at.isoformat(),
        "expires_at": None if record.expires_at is None else record.expires_at.isoformat(),
        "created_by": record.created_by,
    }
