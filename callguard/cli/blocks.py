"""``callguardctl blocks``, ``block``, ``unblock`` and ``reset``: operator controls.

Each change goes to the store with its reason and an audit entry first, then to
the running daemon over the control socket, which applies it at once. A daemon
that was not sent the change still applies it when it next reads the blocks and
the spend from the store, every 10 seconds while it runs and once as it starts.
"""

import argparse
import asyncio
import getpass
import ipaddress
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from callguard.cli.common import (
    EXIT_CONFIG,
    EXIT_DAEMON_UNREACHABLE,
    EXIT_FAILURE,
    EXIT_OK,
    read_config,
)
from callguard.money import format_amount
from callguard.text import escape_controls, plural
from callguard.config import Config
from callguard.config.durations import parse_signed_seconds
from callguard.config.errors import InvalidValue
from callguard.config.offenders import (
    BAN_DURATION_EXAMPLES,
    KEY_ACCOUNTCODE,
    KEY_CALLER,
    KEY_ENDPOINT,
    KEY_SOURCE,
    OFFENDER_KEYS,
    parse_ban_duration,
)
from callguard.daemon.control import ask
from callguard.daemon.operator import (
    COMMAND_BLOCK,
    COMMAND_RESET,
    COMMAND_UNBLOCK,
    STORE_FIELD,
    store_identity,
)
from callguard.numbers.plan import NumberPlan
from callguard.policy.blocks import endpoint_of
from callguard.policy.offenders import normalise_source
from callguard.store import BlockRecord, Store
from callguard.windows import DAY, WEEK, window_keys

UNKNOWN_ACTOR = "unknown"
# Seconds to wait for the daemon to accept the connection, and again for its reply.
CONTROL_TIMEOUT = 5.0
# The daemon reads the active blocks and the spend totals from the store as it
# starts and then every SPEND_REFRESH_SECONDS (10) of callguard.daemon.app. A
# block that it added itself stays for one read more (BlockList.sync).
STORE_READ_ADVICE = ("A running daemon reads the blocks and the spend from the store "
                     "every 10 seconds, so it applies the change within about 10 seconds "
                     "and needs no restart (an unblock takes up to 20 seconds if the "
                     "daemon added that block in the 10 seconds before). A stopped daemon "
                     "applies the change when it starts")
# The longest --for. A longer block is one until unblocked, and the limit keeps
# the expiry far below the year 9999, the last that datetime can hold.
MAX_BLOCK_DAYS = 36500
BLOCK_DURATION_EXAMPLES = "30m, 2h, 1d or 1w"
# Technologies that start a channel name, as PJSIP does in PJSIP/1001-00000012.
CHANNEL_TECHNOLOGIES = frozenset({"pjsip", "sip", "iax2", "dahdi", "local"})
# The noun and an example of each key type, for the error messages.
KEY_NOUNS = {
    KEY_ENDPOINT: "endpoint",
    KEY_CALLER: "calling number",
    KEY_ACCOUNTCODE: "account code",
    KEY_SOURCE: "source address",
}
KEY_EXAMPLES = {
    KEY_ENDPOINT: "1001",
    KEY_CALLER: "01632960010 or +441632960010",
    KEY_ACCOUNTCODE: "sales",
    KEY_SOURCE: "192.0.2.10 or 2001:db8::10",
}


def _duration(text: str) -> int:
    try:
        if parse_signed_seconds(text, BAN_DURATION_EXAMPLES) <= 0:
            raise InvalidValue(
                f"{text!r} must be longer than zero; write how long the block lasts, "
                f"like {BLOCK_DURATION_EXAMPLES}, or leave out --for to block until "
                "unblocked"
            )
        seconds = parse_ban_duration(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds > MAX_BLOCK_DAYS * 86400:
        raise argparse.ArgumentTypeError(
            f"{text!r} is longer than {MAX_BLOCK_DAYS}d (about 100 years); leave out --for "
            "to block until unblocked"
        )
    return seconds


def _reason(text: str) -> str:
    reason = text.strip()
    if not reason:
        raise argparse.ArgumentTypeError(
            "the reason is empty; say why in a few words, for the audit trail"
        )
    return reason


def _exit_status_help(failures: str) -> str:
    """Return the help text on the exit status of a command that changes the store."""
    return (
        "exit status: 0 when the change is stored and the running daemon applied it, "
        "or when no control socket exists (a running daemon reads the change from the "
        "store within about 10 seconds, and a stopped one when it starts); 1 when "
        f"{failures}, or when the daemon rejected the change, for "
        "example because it uses another database; 2 for an invalid argument or "
        "config; 3 when the change is stored but the request through the existing "
        "control socket failed (a daemon that does not respond, a socket left by "
        "one that stopped, or no permission to use it). A running daemon then "
        "applies the change when it next reads the store, within about 10 seconds, "
        "with no restart needed."
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``blocks``, ``block``, ``unblock`` and ``reset`` to ``callguardctl``."""
    blocks = commands.add_parser("blocks", help="active blocks, from the store")
    blocks.add_argument("--json", action="store_true", help="print one JSON array")

    block = commands.add_parser("block", help="block a caller from all outbound calls "
                                "(emergency calls stay allowed)",
                                epilog=_exit_status_help("the store failed"))
    block.add_argument("key", metavar="CALLER", help="the endpoint, calling number, "
                       "account code or source IP address (one address) to block")
    block.add_argument("--for", dest="duration", type=_duration, metavar="DURATION",
                       help=f"how long, like {BLOCK_DURATION_EXAMPLES} (default: until "
                       "unblocked)")
    block.add_argument("--reason", required=True, type=_reason,
                       help="why, kept in the audit trail")
    _add_type(block, KEY_ENDPOINT, KEY_ENDPOINT)

    unblock = commands.add_parser(
        "unblock", help="lift every active block on a caller",
        epilog=_exit_status_help("no active block matches or the store failed"),
    )
    unblock.add_argument("key", metavar="CALLER", help="the blocked key")
    unblock.add_argument("--reason", required=True, type=_reason,
                         help="why, kept in the audit trail")
    _add_type(unblock, None, "every type that CALLER is a valid key of")

    reset = commands.add_parser("reset", help="clear a trunk's spend in the current day "
                                "or week, e.g. after a false alarm",
                                epilog=_exit_status_help("the store failed"))
    reset.add_argument("trunk", help="the trunk section name")
    reset.add_argument("--window", required=True, choices=(DAY, WEEK),
                       help="the window to clear, in the trunk's time zone")
    reset.add_argument("--reason", required=True, type=_reason,
                       help="why, kept in the audit trail")


def _add_type(parser: argparse.ArgumentParser, default: str | None,
              default_text: str) -> None:
    parser.add_argument("--type", dest="key_type", choices=OFFENDER_KEYS,
                        default=default,
                        help=f"what CALLER is (default: {default_text})")


def cmd_blocks(args: argparse.Namespace) -> int:
    config = read_config(args)
    with Store(config.general.database, create_schema=False) as store:
        active = store.active_blocks(datetime.now(timezone.utc))

    if args.json:
        print(json.dumps([_block_data(record) for record in active], indent=2))
        return EXIT_OK
    if not active:
        print("no active blocks")
    # Automatic blocks carry the caller's key and dialled number in key and reason.
    for record in active:
        until = "until unblocked" if record.expires_at is None else (
            f"until {record.expires_at.isoformat(timespec='seconds')}")
        print(f"{record.id:>6} {escape_controls(record.key_type):<11} "
              f"{escape_controls(record.key):<20} {until:<32} {_block_origin(record)}")
    return EXIT_OK


def _block_origin(record: BlockRecord) -> str:
    """Return who set a block and why, and for a renewed block who first set it."""
    if record.renewed_by is None:
        return f"by {escape_controls(record.created_by)}: {escape_controls(record.reason)}"
    return (f"by {escape_controls(record.renewed_by)} at "
            f"{record.renewed_at.isoformat(timespec='seconds')}: "
            f"{escape_controls(record.reason)} (renewed; first blocked by "
            f"{escape_controls(record.created_by)} at "
            f"{record.created_at.isoformat(timespec='seconds')}: "
            f"{escape_controls(record.creation_reason)})")


def cmd_block(args: argparse.Namespace) -> int:
    config = read_config(args, "block")
    try:
        key = normalise_key(config, args.key_type, args.key)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    warning = unusual_key_warning(args.key_type, key)
    if warning is not None:
        print(warning, file=sys.stderr)

    now = datetime.now(timezone.utc)
    expires_at = None if args.duration is None else now + timedelta(seconds=args.duration)
    with Store(config.general.database) as store:
        change = store.block_manually(args.key_type, key, args.reason, now, expires_at,
                                      _actor())
    block, previous = change.block, change.previous
    subject = f"{args.key_type} {escape_controls(key)}"
    if previous is None:
        print(f"blocked {subject} {_until(block.expires_at)} (block {block.id})")
    elif change.extended:
        print(f"{subject} already had block {block.id} {_until(previous.expires_at)}; "
              f"extended it {_until(block.expires_at)} and replaced its reason")
    else:
        print(f"{subject} already has block {block.id} {_until(block.expires_at)}, "
              "which ends no earlier than requested; kept that expiry and replaced "
              "its reason")

    return _tell_daemon(config, {"command": COMMAND_BLOCK, "key_type": args.key_type,
                                 "key": key,
                                 "expires_at": None if block.expires_at is None else
                                 block.expires_at.isoformat()})


def cmd_unblock(args: argparse.Namespace) -> int:
    config = read_config(args, "unblock")
    key_types = OFFENDER_KEYS if args.key_type is None else (args.key_type,)
    now = datetime.now(timezone.utc)
    with Store(config.general.database, create_schema=False) as store:
        active = {(block.key_type, block.key) for block in store.active_blocks(now)}
        keys, problems = _unblock_keys(config, key_types, args.key, active)
        if not keys:
            for problem in problems:
                print(problem, file=sys.stderr)
            return EXIT_CONFIG

        # Only keys with an active block are lifted, so the audit trail records
        # no unblock that changed nothing.
        lifted = {identity: store.unblock_manually(*identity, args.reason, now, _actor())
                  for identity in keys if identity in active}

    if not any(lifted.values()):
        tried = ", ".join(f"{key_type} {escape_controls(key)}" for key_type, key in keys)
        print(f"no active block matches {escape_controls(args.key.strip())} (tried "
              f"{tried}); list the active blocks with callguardctl blocks",
              file=sys.stderr)
        return EXIT_FAILURE

    status = EXIT_OK
    for (key_type, key), count in lifted.items():
        if not count:
            continue
        print(f"lifted {plural(count, 'active block')} on {key_type} "
              f"{escape_controls(key)}")
        daemon_status = _tell_daemon(config, {"command": COMMAND_UNBLOCK,
                                              "key_type": key_type, "key": key})
        status = max(status, daemon_status)
    return status


def _unblock_keys(config: Config, key_types: tuple[str, ...], text: str,
                  active: set[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """Return the (key type, key) pairs to lift for ``text``, and the error messages.

    A type whose ``normalise_key`` rejects ``text`` adds its message and no
    pair. The exception is an active block of that type with ``text`` as its
    exact key, stored before keys were checked on input, which is still lifted.
    """
    keys, problems = [], []
    for key_type in key_types:
        try:
            keys.append((key_type, normalise_key(config, key_type, text)))
        except ValueError as exc:
            if (key_type, text.strip()) in active:
                keys.append((key_type, text.strip()))
            else:
                problems.append(str(exc))
    return keys, problems


def cmd_reset(args: argparse.Namespace) -> int:
    config = read_config(args, "reset")
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
    print(f"cleared {format_amount(cleared)} {config.general.currency} from trunk {trunk.name}, "
          f"{args.window} {key}; live calls keep adding their cost")

    return _tell_daemon(config, {"command": COMMAND_RESET, "trunk": trunk.name,
                                 "window": args.window, "key": key})


def normalise_key(config: Config, key_type: str, text: str) -> str:
    """Return ``text`` in the form the daemon compares for ``key_type``.

    A caller becomes E.164 in the config's home country, and a source becomes
    one IP address without its port, as ``callguard.agi.check`` reads
    ``CALLGUARD_SOURCE``. Raises ``ValueError`` with the message for the
    operator when no call can ever have that key.
    """
    noun, example = KEY_NOUNS[key_type], KEY_EXAMPLES[key_type]
    key = text.strip()
    if not key:
        raise ValueError(f"CALLER is empty; give the {noun}, like {example}")
    if not _is_utf8_text(key):
        # Python turns argument bytes that are not UTF-8 into lone surrogates,
        # which the store cannot encode. The FastAGI server decodes each line
        # with errors="replace", so no key of a check contains them.
        raise ValueError(f"{key!r} contains bytes that are not UTF-8 text, which no "
                         f"{noun} of a check has; give the {noun} in UTF-8, like "
                         f"{example}")
    if key_type == KEY_SOURCE:
        return _source_key(key)
    if key_type == KEY_CALLER:
        return _caller_key(config, key)

    # Asterisk sends the channel name and the account code on one AGI
    # environment line each, so neither contains a line feed.
    if "\n" in key:
        raise ValueError(f"{key!r} contains a line break, which no {noun} has; give "
                         f"the {noun}, like {example}")
    if key_type == KEY_ENDPOINT:
        return _endpoint_key(key)
    return key


def unusual_key_warning(key_type: str, key: str) -> str | None:
    """Return a warning for an endpoint or account code with whitespace or control characters.

    Asterisk's config reader (main/config.c) keeps the text between a
    section's brackets as it is, so a pjsip.conf endpoint, and the channel
    name and endpoint that a check reads, can contain both. A check takes the
    account code from the AGI environment unchanged. Such a key is therefore
    stored, but it is more often a typo, and the block matches only a key
    written exactly so.
    """
    if key_type not in (KEY_ENDPOINT, KEY_ACCOUNTCODE):
        return None
    if not any(character.isspace() or not character.isprintable() for character in key):
        return None

    noun = KEY_NOUNS[key_type]
    return (f"warning: {escape_controls(repr(key))} contains whitespace or a control "
            f"character, so the block matches only an {noun} written exactly so; if "
            f"that is a typo, unblock it and block the {noun} as the channel carries "
            f"it, like {KEY_EXAMPLES[key_type]}")


def _is_utf8_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _source_key(text: str) -> str:
    """Return the one IP address in ``text``, dropping a port as the daemon does."""
    try:
        return str(ipaddress.ip_address(normalise_source(text)))
    except ValueError:
        pass

    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address; write one IPv4 or IPv6 address, like "
            f"{KEY_EXAMPLES[KEY_SOURCE]} (a port, as in 192.0.2.10:5060, is dropped)"
        ) from None
    if network.num_addresses == 1:
        return str(network.network_address)
    raise ValueError(
        f"{text!r} is a network, but a source block matches one address only; "
        "block each address on its own, like 192.0.2.10"
    )


def _caller_key(config: Config, text: str) -> str:
    general = config.general
    plan = NumberPlan(general.home_country, general.outside_line_prefix,
                      general.emergency_numbers)
    e164 = plan.normalise_caller(text)
    if e164 is None:
        raise ValueError(f"{text!r} is not a calling number; write it in national form "
                         f"or E.164, like {KEY_EXAMPLES[KEY_CALLER]}")
    return e164


def _endpoint_key(text: str) -> str:
    """Reject a channel name, because the daemon compares only its endpoint part."""
    technology, slash, _ = text.partition("/")
    if not slash or technology.lower() not in CHANNEL_TECHNOLOGIES:
        return text

    endpoint = endpoint_of(text)
    fix = f"write {endpoint!r}" if endpoint else f"write it like {KEY_EXAMPLES[KEY_ENDPOINT]}"
    raise ValueError(f"{text!r} is a channel name, but an endpoint block matches the "
                     f"endpoint alone, as 1001 in PJSIP/1001-00000012; {fix}")


def _tell_daemon(config: Config, request: dict) -> int:
    """Send a stored change to the running daemon and return the command's exit status.

    The request carries the identity of the store that was changed, so that a
    daemon using another store rejects it.
    """
    path = Path(config.general.control_socket)
    store = store_identity(config.general.database)
    store_url = escape_controls(store["url"])
    try:
        socket_exists = path.exists()
    except OSError as exc:
        # A directory that this user may not search hides whether the socket exists.
        return _not_notified(
            f"cannot check for the control socket {path} ({exc.strerror or exc}). Run "
            "callguardctl as a user that may read the socket's directory", store_url)
    if not socket_exists:
        print(f"the change is stored in {store_url}; no control socket exists at {path}, "
              f"so a running daemon, if any, was not notified. {STORE_READ_ADVICE}.")
        return EXIT_OK

    failed = f"the control socket {path} exists, but the request to the daemon failed"
    try:
        reply = asyncio.run(ask(path, {**request, STORE_FIELD: store}, CONTROL_TIMEOUT))
    except TimeoutError:
        return _unreachable(f"{failed} (no reply within {CONTROL_TIMEOUT:g} s)", store_url)
    except PermissionError as exc:
        return _not_notified(f"{failed} ({exc.strerror}). Run callguardctl as root or as "
                             "a member of the socket's group", store_url)
    except OSError as exc:
        return _unreachable(f"{failed} ({exc.strerror or exc})", store_url)
    except ValueError:
        return _unreachable(f"{failed} (the reply is missing or not JSON)", store_url)
    if not isinstance(reply, dict):
        return _unreachable(f"{failed} (the reply is not a JSON object)", store_url)

    if "error" not in reply:
        print("applied to the running daemon")
        return EXIT_OK
    error = escape_controls(str(reply["error"]))
    if STORE_FIELD in reply:
        print(f"the running daemon rejected the change: {error}. The change is stored in "
              f"{store_url}, which that daemon does not use.", file=sys.stderr)
    else:
        print(f"the running daemon rejected the change: {error}. The change is stored in "
              f"{store_url}. {STORE_READ_ADVICE}.", file=sys.stderr)
    return EXIT_FAILURE


def _unreachable(problem: str, store_url: str) -> int:
    return _not_notified(f"{problem}. The daemon is not responding, or the socket was "
                         "left by a daemon that stopped", store_url)


def _not_notified(problem: str, store_url: str) -> int:
    print(f"{problem}. The change is stored in {store_url}, and the running daemon, if "
          f"any, was not notified. {STORE_READ_ADVICE}.", file=sys.stderr)
    return EXIT_DAEMON_UNREACHABLE


def _until(expires_at: datetime | None) -> str:
    if expires_at is None:
        return "until unblocked"
    return f"until {expires_at.isoformat(timespec='seconds')}"


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
        "renewed_at": None if record.renewed_at is None else record.renewed_at.isoformat(),
        "renewed_by": record.renewed_by,
        "first_reason": record.first_reason,
    }
