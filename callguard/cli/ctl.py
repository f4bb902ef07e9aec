"""``callguardctl``: the sysadmin's command line for callguard."""

import argparse
import asyncio
import ipaddress
import json
import os
import re
import signal
import sys
from pathlib import Path

from callguard import __version__
from callguard.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    add_config_argument,
    category_name,
    read_config,
    row_limit,
)
from callguard.cli import alerts, audit, blocks, live
from callguard.cli.inspect import ask_daemon, check_number, print_check
from callguard.config import Config, ConfigError
from callguard.config.advice import config_warnings
from callguard.daemon.checking import DAEMON_CONFIG, DAEMON_STORE
from callguard.daemon.live import read_ari_settings
from callguard.daemon.operator import same_store, store_identity
from callguard.daemon.state import TablesError, build_state, number_plan
from callguard.metering.guard import RECENT_LEGS
from callguard.money import format_rate
from callguard.numbers import Classifier, PrefixTable, PrefixTableError
from callguard.numbers.classify import with_home_rule_errors
from callguard.numbers.dialstring import MAX_DIALLED_CHARACTERS
from callguard.policy.decision import CallRequest
from callguard.policy.offenders import normalise_source
from callguard.rating import RateDeck, RateDeckError
from callguard.store import Store, StoreError
from callguard.text import escape_controls, plural
from callguard.urls import mask_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callguardctl", description="Inspect and manage callguard."
    )
    parser.add_argument("--version", action="version", version=f"callguardctl {__version__}")
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="show the decision for a number, and why, "
                                "without placing a call or holding any budget")
    check.add_argument("number", help="the number as dialled, e.g. 0044 9011234567")
    check.add_argument("--trunk", required=True, help="the trunk section name")
    check.add_argument("--caller", default="", help="the CLI presented on the trunk")
    check.add_argument("--channel", default="", help="the channel the check runs on, "
                       "e.g. PJSIP/1001-00000012, for blocks and limits by endpoint")
    check.add_argument("--accountcode", default="", help="the channel's accountcode")
    check.add_argument("--source", default="", help="the caller's address, for blocks "
                       "by source")
    check.add_argument("--offline", action="store_true", help="decide from the config "
                       "and the store without asking the running daemon")
    check.add_argument("--json", action="store_true", help="print one JSON object")

    commands.add_parser("check-config", help="validate the config and the files it names; "
                        "exit 2 on any error")

    status = commands.add_parser("status", help="spend per trunk against its limits, and "
                                 "the live calls (asks the running daemon)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _add_socket_argument(status)

    calls = commands.add_parser(
        "calls", help="live and recent calls that the running daemon has seen since it "
        "started, with destination, duration, cost and how each ended",
        description="List the calls that the running daemon holds in memory: the live "
        f"calls and the last {RECENT_LEGS} that ended, all seen since it started (live "
        "calls include those it took over from the store as it started). It does not "
        "read the store's history, and it does not list the calls of other daemons "
        "that share the store. Only when the daemon cannot be reached, and --live is "
        f"not given, the last {live.STORED_CALLS} calls from the store are listed "
        "instead.")
    calls.add_argument("--live", action="store_true", help="live calls only")
    calls.add_argument("--json", action="store_true", help="print one JSON object")
    _add_socket_argument(calls)

    prefixes = commands.add_parser("prefixes", help="the number-prefix table")
    prefix_commands = prefixes.add_subparsers(dest="action", required=True)
    prefix_import = prefix_commands.add_parser("import", help="load a prefix table CSV into "
                                               "the store")
    prefix_import.add_argument("file", help="CSV with prefix,category,description")
    prefix_list = prefix_commands.add_parser("list", help="list the table in the store")
    prefix_list.add_argument("--category", type=category_name,
                             help="only this category, such as premium")
    prefix_list.add_argument("--json", action="store_true")

    rates = commands.add_parser("rates", help="rate decks")
    rate_commands = rates.add_subparsers(dest="action", required=True)
    rate_import = rate_commands.add_parser("import", help="load a rate deck CSV into the "
                                           "store for a trunk")
    rate_import.add_argument("file", help="CSV with prefix,description,rate,connection_fee,"
                             "increments")
    rate_import.add_argument("--trunk", required=True,
                             help="the trunk section name, as in [trunk NAME]")
    rate_list = rate_commands.add_parser("list", help="list a trunk's rates in the store")
    rate_list.add_argument("--trunk", required=True,
                           help="the trunk section name, as in [trunk NAME]")
    rate_list.add_argument("--prefix", help="only prefixes starting with this text: "
                           "digits, like 44, or short: and digits, like short:118")
    rate_list.add_argument("--limit", type=row_limit, default=100,
                           help="rows at most (default 100)")
    rate_list.add_argument("--json", action="store_true")

    alerts.add_commands(commands)
    blocks.add_commands(commands)
    audit.add_commands(commands)
    return parser


def _add_socket_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", help="the daemon's control socket, "
                        "instead of control_socket in the config; works while the "
                        "config file has errors")


def cmd_check_config(args: argparse.Namespace) -> int:
    config = read_config(args)
    try:
        # The daemon reads the password and ca_file like this at start and on
        # reload. A start without them runs unmetered and a reload fails, so
        # systemd's check before either must fail too.
        read_ari_settings(config)
        tables = build_state(config)
    except (ConfigError, PrefixTableError, RateDeckError, ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for warning in config_warnings(config, tables.prefixes):
        print(f"{config.path}: warning: {warning}", file=sys.stderr)
    rated = sum(len(deck) for deck in tables.state.decks.values())
    print(f"{config.path}: OK, {plural(len(config.trunks), 'trunk')}, "
          f"{plural(len(tables.prefixes), 'prefix', 'prefixes')}, "
          f"{plural(rated, 'rate')}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = read_config(args)
    source = normalise_source(args.source)
    if source:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            print(f"--source {args.source!r} is not an IP address; give the caller's "
                  "address, like 192.0.2.10 or 192.0.2.10:5060", file=sys.stderr)
            return EXIT_CONFIG
    # Stripped as the FastAGI check strips its arguments.
    request = CallRequest(trunk=args.trunk.strip(), dialled=args.number.strip(),
                          caller=args.caller.strip(),
                          channel=args.channel, accountcode=args.accountcode, source=source)
    report = None
    # A longer string is an emergency number written with separators or an
    # invalid one, whatever the daemon's live state. It may not fit in a
    # request to the daemon either, so it is decided here.
    if not args.offline and len(request.dialled) <= MAX_DIALLED_CHARACTERS:
        try:
            report = ask_daemon(config, request)
        except RuntimeError as exc:
            print(f"the daemon could not check the number: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    if report is not None and not _daemon_uses(report, config):
        report = None
    if report is None:
        report = asyncio.run(check_number(config, request))
    print_check(report, as_json=args.json)
    if request.trunk not in config.trunks:
        # A decision that stops earlier, such as invalid-number, would hide the typo.
        known = ", ".join(config.trunks) or "none"
        print(f"warning: {args.config} has no [trunk {request.trunk}]; its trunks: {known}",
              file=sys.stderr)
    return EXIT_OK


def _daemon_uses(report: dict, config: Config) -> bool:
    """Check whether the daemon that made ``report`` runs with ``config`` and its store.

    Prints a warning when it does not, because its decision would then come
    from other settings than the ones the command names.
    """
    daemon_config = report.pop(DAEMON_CONFIG, None)
    daemon_store = report.pop(DAEMON_STORE, None)
    if daemon_config is None or not isinstance(daemon_store, dict):
        return True  # a daemon from before these fields, whose decision is all there is
    ours = store_identity(config.general.database)
    same_config = os.path.realpath(daemon_config) == os.path.realpath(config.path)
    if same_config and same_store(ours, daemon_store):
        return True
    daemon_url = escape_controls(str(daemon_store.get("url", "")))
    print(f"warning: the running daemon uses {escape_controls(daemon_config)} and the store "
          f"{daemon_url}, not {config.path} and {ours['url']}; deciding from the latter "
          "without the daemon's live calls and pending checks", file=sys.stderr)
    return False


def open_store(config: Config, *, create_schema: bool = True) -> Store:
    """Open the config's store; without ``create_schema`` it must already exist."""
    store = Store(config.general.database, create_schema=create_schema)
    store.open()
    return store


def cmd_prefixes(args: argparse.Namespace) -> int:
    return _reporting_bad_input(_prefixes, args)


def cmd_rates(args: argparse.Namespace) -> int:
    return _reporting_bad_input(_rates, args)


def _reporting_bad_input(command, args: argparse.Namespace) -> int:
    """Run ``command``, turning a rejected value into one line."""
    try:
        return command(args)
    except ValueError as exc:
        # The store's checks name the value and the fix.
        print(f"callguardctl {args.command} {args.action}: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _prefixes(args: argparse.Namespace) -> int:
    if args.action == "import":
        config = read_config(args)
        plan = number_plan(config)
        try:
            table = PrefixTable.from_csv(args.file)
        except PrefixTableError as exc:
            raise with_home_rule_errors(exc, plan) from None
        # The daemon's own checks of a table against the dialling plan, so that an
        # import never stores a table that the daemon would then reject.
        Classifier(plan, table)
        store = open_store(config)
        rows = [(r.prefix, r.category, r.description) for r in table.rules()]
        count = store.replace_prefixes(rows, str(args.file))
        print(f"imported {plural(count, 'prefix', 'prefixes')} from {args.file}")
        print("note: the daemon classifies with the table named by 'prefixes' in the config; "
              "point it there and reload to use this file")
        return EXIT_OK

    config = read_config(args)
    store = open_store(config, create_schema=False)
    stored = store.list_prefixes()
    rows = [r for r in stored if not args.category or r[1] == args.category]
    if not rows and not args.json:
        print(_no_prefixes_message(config, stored, args.category), file=sys.stderr)
    if args.json:
        print(json.dumps([{"prefix": p, "category": c, "description": d} for p, c, d in rows],
                         indent=2))
    else:
        for prefix, category, description in rows:
            print(f"{prefix:<12} {category:<20} {description}")
    return EXIT_OK


def _rates(args: argparse.Namespace) -> int:
    config = read_config(args)
    if args.trunk not in config.trunks:
        print(_unknown_trunk(config, args.trunk), file=sys.stderr)
        return EXIT_CONFIG

    if args.action == "import":
        try:
            deck = RateDeck.from_csv(args.file)
        except OSError as exc:
            print(f"{exc.filename or args.file}: cannot read it: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_CONFIG
        store = open_store(config)
        rows = ((t.prefix, t.description, t.rate, t.connection_fee, t.increments.first,
                 t.increments.later) for t in deck.tariffs())
        count = store.replace_rates(args.trunk, rows, str(args.file))
        print(f"imported {plural(count, 'rate')} for trunk {args.trunk} from {args.file}")
        print("note: the daemon rates with the file named by 'rates' in the trunk's section; "
              "point it there and reload to use this file")
        return EXIT_OK

    store = open_store(config, create_schema=False)
    rows = store.list_rates(args.trunk, args.prefix, args.limit)
    if not rows and not args.json:
        print(_no_rates_message(config, args.trunk, args.prefix), file=sys.stderr)
    if args.json:
        print(json.dumps([
            {"prefix": p, "description": d, "rate": format_rate(r), "connection_fee": str(f),
             "increments": f"{a}/{b}"} for p, d, r, f, a, b in rows
        ], indent=2))
    else:
        for prefix, description, rate, fee, first, later in rows:
            print(f"{prefix:<12} {format_rate(rate):>10} {fee:>8} {first}/{later:<6} {description}")
    return EXIT_OK


def _no_prefixes_message(config: Config, stored: list, category: str | None) -> str:
    """Return why ``prefixes list`` lists nothing, for standard error."""
    database = mask_url(config.general.database)
    if stored:
        return f"no prefix of category {category} is stored in {database}"
    return (f"no prefix table is stored in {database}; the daemon stores the table it "
            "uses each time it starts, or store one with callguardctl prefixes import "
            "FILE")


def _no_rates_message(config: Config, trunk: str, prefix: str | None) -> str:
    """Return why ``rates list`` lists nothing for ``trunk``."""
    database = mask_url(config.general.database)
    if prefix:
        return (f"no rate of trunk {trunk} whose prefix starts with {prefix} is stored "
                f"in {database}")
    if config.trunks[trunk].rates is None:
        return (f"no rate deck is stored for trunk {trunk} in {database}, and its "
                f"section in {config.path} names no rates file; store one with "
                f"callguardctl rates import FILE --trunk {trunk}")
    return (f"no rate deck is stored for trunk {trunk} in {database}; the daemon "
            "stores the deck named by 'rates' each time it starts, or store one with "
            f"callguardctl rates import FILE --trunk {trunk}")


def _unknown_trunk(config: Config, name: str) -> str:
    """Return the message for a --trunk that names no trunk section of ``config``."""
    defined = ", ".join(sorted(config.trunks)) or "none defined"
    if not name.strip():
        return f"--trunk is empty; give a trunk of {config.path} ({defined})"
    return (f"trunk {name!r} is not in {config.path}; define [trunk {name}] there or "
            f"use one of the trunks ({defined})")


def control_socket(args: argparse.Namespace) -> Path:
    """Return --socket, else the config's control_socket (which needs a valid config)."""
    if args.socket:
        return Path(args.socket)
    advice = (f"callguardctl {args.command} reads control_socket from the config. "
              "While the config cannot be loaded, name the running daemon's socket "
              "with --socket PATH, like --socket /run/callguard/callguard.sock")
    return Path(read_config(args, advice=advice).general.control_socket)


def cmd_status(args: argparse.Namespace) -> int:
    return live.cmd_status(control_socket(args), args.json)


def cmd_calls(args: argparse.Namespace) -> int:
    return live.cmd_calls(control_socket(args), lambda: read_config(args), args.live,
                          args.json)


COMMANDS = {
    "status": cmd_status,
    "calls": cmd_calls,
    "check": cmd_check,
    "check-config": cmd_check_config,
    "prefixes": cmd_prefixes,
    "rates": cmd_rates,
    "alerts": alerts.cmd_alerts,
    "test-mail": alerts.cmd_test_mail,
    "blocks": blocks.cmd_blocks,
    "block": blocks.cmd_block,
    "unblock": blocks.cmd_unblock,
    "reset": blocks.cmd_reset,
    "audit": audit.cmd_audit,
}


# The exit status when the reader of stdout has gone away, as after
# "callguardctl audit | head". 141 is 128 + SIGPIPE, the status that the shell
# reports for cat or grep ended by SIGPIPE there, so "set -o pipefail" scripts
# treat callguardctl like them. 1 would read as EXIT_FAILURE, a failed command.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


# Options that take a duration. argparse reads a value that starts with "-",
# as in "--for -1h", as an option of its own and reports "expected one
# argument", so such a value is attached first and the option's own check
# reports it.
DURATION_OPTIONS = frozenset({"--for", "--since"})
NEGATIVE_VALUE = re.compile(r"-[0-9.]")


def attach_negative_values(argv: list[str]) -> list[str]:
    """Return ``argv`` with ``--for -1h`` written as ``--for=-1h``, for every duration option."""
    attached = []
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            attached.extend(argv[index:])
            break

        following = argv[index + 1] if index + 1 < len(argv) else ""
        if argument in DURATION_OPTIONS and NEGATIVE_VALUE.match(following):
            attached.append(f"{argument}={following}")
            index += 2
            continue

        attached.append(argument)
        index += 1
    return attached


def main(argv: list[str] | None = None) -> int:
    try:
        return _run_flushed(argv)
    except BrokenPipeError:
        # As the Python docs advise (signal module, "Note on SIGPIPE"): stdout
        # goes to /dev/null, so the flush at interpreter exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run_flushed(argv: list[str] | None) -> int:
    """Run the command, then flush stdout, so that a closed pipe raises here.

    Unflushed, buffered output would fail at interpreter exit, which prints
    "Exception ignored" and exits 120.
    """
    try:
        status = _run(argv)
    except SystemExit:
        # argparse exits after printing --help or --version.
        sys.stdout.flush()
        raise
    sys.stdout.flush()
    return status


def _run(argv: list[str] | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(attach_negative_values(argv))
    try:
        return COMMANDS[args.command](args)
    except (PrefixTableError, RateDeckError, TablesError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"store: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
