"""The classic AGI relay agi/callguard-check.agi, run as Asterisk runs it."""

import ast
import asyncio
import importlib.machinery
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from callguard.agi.protocol import AGIChannel, AGILimits
from callguard.agi.server import FastAGIServer
from callguard.numbers.plan import NumberPlan
from emulator.dialplan import Dialplan
from emulator.fastagi import AGICall, run_classic_agi
from test_dialplan import CONTEXT, SNIPPET, written_numbers

RELAY = Path(__file__).parent.parent / "agi" / "callguard-check.agi"
LIMITS = AGILimits(block_timeout=0.5, reply_timeout=0.5)
UNREACHABLE = "callguard-unreachable"
# What the relay reads from the dialplan before it applies the fail policy.
EMERGENCY_READS = [
    "GET VARIABLE CALLGUARD_EMERGENCY_NUMBERS",
    "GET VARIABLE CALLGUARD_OUTSIDE_PREFIX",
]


def load_relay_module():
    """Import the relay script as a module, leaving no bytecode cache in agi/."""
    loader = importlib.machinery.SourceFileLoader("callguard_check_agi", str(RELAY))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
    return module


relay = load_relay_module()


def make_call(**overrides) -> AGICall:
    fields = dict(
        extension="0044987654",
        channel="Local/0044987654@outbound-classic-00000004;2",
        uniqueid="1796397427.9",
        callerid="15551230000",
        context="outbound-classic",
        arguments=("0044987654", "gamma"),
        variables={"CALLGUARD_TRUNK": "trunk-b"},
    )
    return AGICall(**{**fields, **overrides})


class Daemon:
    """A FastAGI server on a free loopback port with one test route."""

    def __init__(self, routes):
        self.server = FastAGIServer(
            routes, "127.0.0.1", 0, limits=LIMITS, session_timeout=5
        )

    @property
    def address(self) -> str:
        host, port = self.server.sockets[0]
        return f"{host}:{port}"


@pytest.fixture
async def daemon_factory():
    started = []

    async def start(routes) -> Daemon:
        daemon = Daemon(routes)
        await daemon.server.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.server.stop(grace=0.1)


@pytest.fixture
def closed_port():
    """A loopback port that is bound but not listening, so connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_relay_is_executable():
    assert os.access(RELAY, os.X_OK)
    assert RELAY.read_text().startswith("#!/usr/bin/env python3\n")


async def test_relay_to_daemon(daemon_factory):
    seen = {}

    async def check(channel: AGIChannel) -> None:
        seen["env"] = dict(channel.env)
        seen["arguments"] = channel.arguments
        seen["trunk"] = await channel.get_variable("CALLGUARD_TRUNK")
        await channel.set_variable("CALLGUARD_RESULT", "ALLOW")
        await channel.set_variable("CALLGUARD_REASON", 'say "hi"\nEXEC Hangup')

    daemon = await daemon_factory({"check": check})
    call = make_call()

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": daemon.address}
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": 'say "hi"EXEC Hangup',
    }
    assert result.closed_by_server
    assert seen["trunk"] == "trunk-b"
    assert seen["arguments"] == ["0044987654", "gamma"]

    # The block reaches the daemon as Asterisk sends it for agi://HOST:PORT/check.
    env = seen["env"]
    classic = call.classic_environment(RELAY.name)
    assert list(env)[:3] == ["agi_network", "agi_network_script", "agi_request"]
    assert env["agi_network"] == "yes"
    assert env["agi_network_script"] == "check"
    assert env["agi_request"] == f"agi://{daemon.address}/check"
    assert list(env.items())[3:] == classic[1:]


async def test_relay_forwards_hangup(daemon_factory):
    seen = {}

    async def check(channel: AGIChannel) -> None:
        for _ in range(3):
            await channel.get_variable("CALLGUARD_TRUNK")
        seen["hung_up"] = channel.hung_up
        await channel.set_variable("CALLGUARD_RESULT", "DENY")

    daemon = await daemon_factory({"check": check})

    result = await run_classic_agi(
        str(RELAY),
        make_call(),
        env={"CALLGUARD_FASTAGI": daemon.address},
        hangup_before_command=2,
    )

    assert result.returncode == 0, result.stderr
    assert result.hung_up
    assert seen["hung_up"] is True
    assert result.variables == {"CALLGUARD_RESULT": "DENY"}
    assert "SIGHUP" in result.stderr


@pytest.mark.parametrize(
    "policy, expected",
    [
        (None, "DENY"),
        ("deny", "DENY"),
        ("allow", "ALLOW"),
        ("ALLOW", "ALLOW"),
        ("maybe", "DENY"),
    ],
)
async def test_fail_policy_unreachable(closed_port, policy, expected):
    env = {"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    if policy is not None:
        env["CALLGUARD_FAIL_POLICY"] = policy

    result = await run_classic_agi(str(RELAY), make_call(), env=env)

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_RESULT": expected,
        "CALLGUARD_REASON": UNREACHABLE,
    }
    assert result.commands == [
        *EMERGENCY_READS,
        "GET VARIABLE CALLGUARD_FAIL_POLICY",
        f"SET VARIABLE CALLGUARD_RESULT {expected}",
        f"SET VARIABLE CALLGUARD_REASON {UNREACHABLE}",
    ]
    assert "cannot reach the callguard daemon" in result.stderr
    assert result.elapsed < 3
    if policy == "maybe":
        assert "invalid CALLGUARD_FAIL_POLICY 'maybe'" in result.stderr


@pytest.mark.parametrize(
    "dialplan, environment, expected",
    [
        ("allow", "deny", "ALLOW"),   # the dialplan's global wins
        ("deny", "allow", "DENY"),
        ("Allow", None, "ALLOW"),
        ("sometimes", "allow", "DENY"),  # invalid in the dialplan: deny
    ],
)
async def test_fail_policy_from_dialplan(closed_port, dialplan, environment, expected):
    env = {"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    if environment is not None:
        env["CALLGUARD_FAIL_POLICY"] = environment
    call = make_call(variables={"CALLGUARD_TRUNK": "trunk-b",
                                "CALLGUARD_FAIL_POLICY": dialplan})

    result = await run_classic_agi(str(RELAY), call, env=env)

    assert result.returncode == 0, result.stderr
    assert result.variables["CALLGUARD_RESULT"] == expected
    assert result.variables["CALLGUARD_REASON"] == UNREACHABLE
    if dialplan == "sometimes":
        assert "invalid CALLGUARD_FAIL_POLICY 'sometimes' in the dialplan" in result.stderr


# Spellings of the fail policy in the dialplan, and whether a call goes out
# while callguard is down. Only a spelling of allow in any case
# lets it through.
POLICY_SPELLINGS = [
    ("allow", True),
    ("Allow", True),
    ("ALLOW", True),
    ("aLLoW", True),
    ("deny", False),
    ("Deny", False),
    ("", False),
    (" allow", False),
    ("allow ", False),
    ("allowed", False),
    ("alow", False),
    ("sometimes", False),
]


@pytest.mark.parametrize("policy, dials", POLICY_SPELLINGS)
async def test_relay_and_snippet_agree_on_policy(closed_port, policy, dials):
    # The snippet's AGI() runs the relay while callguard is down, so both read
    # the same CALLGUARD_FAIL_POLICY.
    dialplan_globals = {"CALLGUARD_FAIL_POLICY": policy}
    results = []

    async def run_relay(url, arguments, channel):
        call = make_call(extension=arguments[0], arguments=tuple(arguments),
                         variables={**dialplan_globals, **channel})
        result = await run_classic_agi(
            str(RELAY), call, env={"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"})
        results.append(result)
        return ("SUCCESS" if result.returncode == 0 else "FAILURE"), result.variables

    dialplan = Dialplan(SNIPPET.read_text())
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=run_relay,
                                 globals=dialplan_globals)

    [result] = results
    assert result.returncode == 0, result.stderr
    assert result.variables["CALLGUARD_RESULT"] == ("ALLOW" if dials else "DENY")
    assert outcome.dials == ([["PJSIP/01632960123@gamma", "60", "S(3600)"]] if dials else [])
    if not dials:
        assert outcome.hangup_cause == "21"


@pytest.mark.parametrize(
    "address",
    ["nonsense:port", "127.0.0.1:0", "127.0.0.1:", "127.0.0.1:99999", "[::1", "[::1]x",
     # Rejected before any name lookup: a label over 63 characters, a line break.
     "a" * 64 + ".invalid:4573", "local\nhost:4573"],
)
async def test_fail_policy_bad_address(address):
    result = await run_classic_agi(
        str(RELAY), make_call(), env={"CALLGUARD_FASTAGI": address}
    )

    assert result.variables["CALLGUARD_RESULT"] == "DENY"
    assert "invalid CALLGUARD_FASTAGI" in result.stderr


async def failing_check(channel: AGIChannel) -> None:
    await channel.get_variable("CALLGUARD_TRUNK")
    raise RuntimeError("decision failed")


async def test_fail_policy_handler_error(daemon_factory):
    daemon = await daemon_factory({"check": failing_check})

    result = await run_classic_agi(
        str(RELAY),
        make_call(),
        env={"CALLGUARD_FASTAGI": daemon.address, "CALLGUARD_FAIL_POLICY": "allow"},
    )

    assert result.returncode == 0, result.stderr
    assert result.commands == [
        "GET VARIABLE CALLGUARD_TRUNK",
        *EMERGENCY_READS,
        "GET VARIABLE CALLGUARD_FAIL_POLICY",
        "SET VARIABLE CALLGUARD_RESULT ALLOW",
        f"SET VARIABLE CALLGUARD_REASON {UNREACHABLE}",
    ]
    assert (
        "the daemon ended the session without setting CALLGUARD_RESULT; applying "
        "the fail policy"
    ) in result.stderr


async def test_fail_policy_unknown_script(daemon_factory):
    daemon = await daemon_factory({"other": failing_check})

    result = await run_classic_agi(
        str(RELAY), make_call(), env={"CALLGUARD_FASTAGI": daemon.address}
    )

    assert result.variables == {
        "CALLGUARD_RESULT": "DENY",
        "CALLGUARD_REASON": UNREACHABLE,
    }


async def test_fail_policy_daemon_stalls(daemon_factory):
    async def stall(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        await asyncio.sleep(30)

    daemon = await daemon_factory({"check": stall})

    result = await run_classic_agi(
        str(RELAY),
        make_call(),
        env={"CALLGUARD_FASTAGI": daemon.address, "CALLGUARD_RELAY_TIMEOUT": "0.5"},
    )

    assert result.variables == {
        "CALLGUARD_RESULT": "DENY",
        "CALLGUARD_REASON": UNREACHABLE,
    }
    assert result.elapsed < 3
    assert (
        "the relay gave up after 0.5 s (CALLGUARD_RELAY_TIMEOUT), because the daemon "
        "had not set CALLGUARD_RESULT by then; applying the fail policy"
    ) in result.stderr
    assert "the daemon ended the session" not in result.stderr


async def set_emergency_then_fail(channel: AGIChannel) -> None:
    await channel.set_variable("CALLGUARD_EMERGENCY", "999")
    raise RuntimeError("decision failed")


async def set_emergency_then_stall(channel: AGIChannel) -> None:
    await channel.set_variable("CALLGUARD_EMERGENCY", "999")
    await asyncio.sleep(30)


@pytest.mark.parametrize("handler", [set_emergency_then_fail, set_emergency_then_stall])
@pytest.mark.parametrize("policy", ["deny", "allow"])
async def test_emergency_allowed_after_failure(daemon_factory, handler, policy):
    daemon = await daemon_factory({"check": handler})
    call = make_call(
        extension="999#",
        arguments=("999#", "gamma"),
        variables={"CALLGUARD_TRUNK": "trunk-b", "CALLGUARD_FAIL_POLICY": policy},
    )

    result = await run_classic_agi(
        str(RELAY),
        call,
        env={"CALLGUARD_FASTAGI": daemon.address, "CALLGUARD_RELAY_TIMEOUT": "0.5"},
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_EMERGENCY": "999",
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": "emergency",
    }
    # The fail policy is not read, because it does not apply.
    assert result.commands == [
        'SET VARIABLE CALLGUARD_EMERGENCY "999"',
        "SET VARIABLE CALLGUARD_RESULT ALLOW",
        "SET VARIABLE CALLGUARD_REASON emergency",
    ]
    assert "allowing the emergency call" in result.stderr
    assert "by the fail policy" not in result.stderr


async def test_empty_emergency_uses_fail_policy(daemon_factory):
    async def check(channel: AGIChannel) -> None:
        await channel.set_variable("CALLGUARD_EMERGENCY", "")
        raise RuntimeError("decision failed")

    daemon = await daemon_factory({"check": check})

    result = await run_classic_agi(
        str(RELAY), make_call(), env={"CALLGUARD_FASTAGI": daemon.address}
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_EMERGENCY": "",
        "CALLGUARD_RESULT": "DENY",
        "CALLGUARD_REASON": UNREACHABLE,
    }


# (dialled, dialplan variables, emergency number). 999 and 112 are emergency
# numbers for callguard in every configuration, other numbers only when the
# dialplan lists them.
RELAY_EMERGENCY_FORMS = [
    ("999", {}, "999"),
    ("112", {}, "112"),
    ("999#", {}, "999"),
    ("112##", {}, "112"),
    ("9 9 9", {}, "999"),
    ("(112)", {}, "112"),
    ("tel:999", {}, "999"),
    (" 999\t", {}, "999"),
    ("141999", {}, "999"),
    ("1470112#", {}, "112"),
    ("9999", {"CALLGUARD_OUTSIDE_PREFIX": "9"}, "999"),
    ("9141112#", {"CALLGUARD_OUTSIDE_PREFIX": "9"}, "112"),
    ("1419999", {"CALLGUARD_OUTSIDE_PREFIX": "9"}, "999"),
    ("18000#", {"CALLGUARD_EMERGENCY_NUMBERS": "999,112,18000"}, "18000"),
    ("14118000", {"CALLGUARD_EMERGENCY_NUMBERS": "18000"}, "18000"),
    ("999", {"CALLGUARD_EMERGENCY_NUMBERS": "18000"}, "999"),
]


@pytest.mark.parametrize("dialled, variables, number", RELAY_EMERGENCY_FORMS)
@pytest.mark.parametrize("policy", ["deny", "allow"])
async def test_emergency_allowed_while_unreachable(closed_port, dialled, variables, number,
                                                   policy):
    call = make_call(
        extension=dialled,
        arguments=(dialled, "gamma", "01632960010"),
        variables={"CALLGUARD_FAIL_POLICY": policy, **variables},
    )

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    )

    assert result.returncode == 0, result.stderr
    # CALLGUARD_EMERGENCY first, as the daemon sets it, and the number itself,
    # which the dialplan dials in place of the dialled string.
    assert list(result.variables.items()) == [
        ("CALLGUARD_EMERGENCY", number),
        ("CALLGUARD_RESULT", "ALLOW"),
        ("CALLGUARD_REASON", "emergency"),
    ]
    assert "GET VARIABLE CALLGUARD_FAIL_POLICY" not in result.commands
    assert f"is the emergency number {number}" in result.stderr


async def test_emergency_from_extension(closed_port):
    # Without arguments the dialled number is agi_extension, as for the daemon.
    call = make_call(extension="999#", arguments=())

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    )

    assert result.variables["CALLGUARD_EMERGENCY"] == "999"
    assert result.variables["CALLGUARD_RESULT"] == "ALLOW"


@pytest.mark.parametrize("dialled, variables", [
    ("9999", {}),                                          # no outside-line prefix
    ("9999", {"CALLGUARD_OUTSIDE_PREFIX": "8"}),
    ("18000", {}),                                         # not listed
    ("18000#", {"CALLGUARD_EMERGENCY_NUMBERS": "999, 18000"}),  # a space: invalid
    ("8999", {"CALLGUARD_OUTSIDE_PREFIX": "8x"}),          # invalid prefix
    ("9990", {}),
    ("0999", {}),
    ("999#1", {}),
    ("+999", {}),
    ("141141999", {}),
    ("tel:+44999", {}),
])
async def test_other_number_gets_fail_policy(closed_port, dialled, variables):
    call = make_call(extension=dialled, arguments=(dialled, "gamma"), variables=variables)

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_RESULT": "DENY",
        "CALLGUARD_REASON": UNREACHABLE,
    }


async def test_invalid_dialplan_lists_logged(closed_port):
    call = make_call(variables={"CALLGUARD_EMERGENCY_NUMBERS": "999, 18000,,x",
                                "CALLGUARD_OUTSIDE_PREFIX": "99999"})

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"}
    )

    assert result.variables["CALLGUARD_RESULT"] == "DENY"
    assert "invalid entries in CALLGUARD_EMERGENCY_NUMBERS: ' 18000', '', 'x'" in result.stderr
    assert "invalid CALLGUARD_OUTSIDE_PREFIX '99999'" in result.stderr


async def test_emergency_allowed_after_daemon_error(daemon_factory):
    # The daemon failed before it set anything, even CALLGUARD_EMERGENCY.
    daemon = await daemon_factory({"check": failing_check})
    call = make_call(extension="141999#", arguments=("141999#", "gamma"))

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": daemon.address}
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_EMERGENCY": "999",
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": "emergency",
    }


@pytest.mark.parametrize("prefix", ["", "9"])
def test_relay_agrees_with_number_plan(prefix):
    plan = NumberPlan("GB", prefix, ("999", "112", "18000"))
    numbers = ("999", "112", "18000")
    mismatches = []
    for dialled in written_numbers():
        for text in (dialled, f" {dialled}\t"):
            found = relay.emergency_number(text, numbers, prefix)
            if found != plan.emergency(text):
                mismatches.append((text, found, plan.emergency(text)))

    assert mismatches == []


class RawDaemon:
    """A TCP server on a free loopback port that sends fixed bytes after the block.

    After sending ``payload`` it reads ``replies`` lines, or up to the end of
    the stream when ``replies`` is None, and then closes the connection.
    """

    def __init__(self, payload: bytes, replies: int | None = None):
        self.payload = payload
        self.replies = replies
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        try:
            async with asyncio.timeout(5):
                while (await reader.readline()).strip():
                    pass
                writer.write(self.payload)
                await writer.drain()
                if self.replies is None:
                    await reader.read()
                for _ in range(self.replies or 0):
                    self.received.append(await reader.readline())
        finally:
            writer.close()


@pytest.fixture
async def raw_daemon_factory():
    started = []

    async def start(payload: bytes, replies: int | None = None) -> tuple[RawDaemon, str]:
        daemon = RawDaemon(payload, replies)
        address = await daemon.start()
        started.append(daemon)
        return daemon, address

    yield start
    for daemon in started:
        await daemon.stop()


def verbose_command(length: int) -> bytes:
    """Return a VERBOSE command line of ``length`` bytes, newline included."""
    padding = length - len(b'VERBOSE "" 1\n')
    return b'VERBOSE "' + b"a" * padding + b'" 1\n'


async def test_relay_longest_command(raw_daemon_factory):
    # Asterisk reads a line of 2047 bytes, newline included, as one command.
    command = verbose_command(relay.MAX_COMMAND_LINE)
    payload = command + b'SET VARIABLE CALLGUARD_RESULT "ALLOW"\n'
    daemon, address = await raw_daemon_factory(payload, replies=2)

    result = await run_classic_agi(
        str(RELAY), make_call(), env={"CALLGUARD_FASTAGI": address}
    )

    assert result.returncode == 0, result.stderr
    assert result.commands == [
        command.decode().rstrip("\n"),
        'SET VARIABLE CALLGUARD_RESULT "ALLOW"',
    ]
    assert result.variables == {"CALLGUARD_RESULT": "ALLOW"}
    assert daemon.received == [b"200 result=1\n", b"200 result=1\n"]


async def test_fail_policy_command_too_long(raw_daemon_factory):
    # Asterisk would run the first 2047 bytes as one command and the rest, here
    # a SET VARIABLE, as another, and send two replies where the relay counts one.
    head = b"VERBOSE " + b"a" * (relay.MAX_COMMAND_LINE - len(b"VERBOSE "))
    payload = head + b"SET VARIABLE CALLGUARD_RESULT ALLOW\n"
    _, address = await raw_daemon_factory(payload)
    call = make_call(variables={"CALLGUARD_TRUNK": "trunk-b",
                                "CALLGUARD_FAIL_POLICY": "allow"})

    result = await run_classic_agi(
        str(RELAY), call, env={"CALLGUARD_FASTAGI": address}
    )

    assert result.returncode == 0, result.stderr
    assert result.commands == [
        *EMERGENCY_READS,
        "GET VARIABLE CALLGUARD_FAIL_POLICY",
        "SET VARIABLE CALLGUARD_RESULT ALLOW",
        f"SET VARIABLE CALLGUARD_REASON {UNREACHABLE}",
    ]
    assert result.variables == {
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": UNREACHABLE,
    }
    assert "longer than the limit of 2047" in result.stderr


async def test_emergency_before_long_command(raw_daemon_factory):
    # Lines that arrive before an over-long one still reach Asterisk.
    payload = (
        b'SET VARIABLE CALLGUARD_EMERGENCY "999"\n'
        + verbose_command(relay.MAX_COMMAND_LINE + 1)
    )
    _, address = await raw_daemon_factory(payload)

    result = await run_classic_agi(
        str(RELAY), make_call(), env={"CALLGUARD_FASTAGI": address}
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {
        "CALLGUARD_EMERGENCY": "999",
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": "emergency",
    }
    assert not any(command.startswith("VERBOSE") for command in result.commands)


@pytest.mark.parametrize("timeout", ["inf", "1e12", "3601", "nan", "0", "-1", "x"])
async def test_relay_timeout_invalid(daemon_factory, timeout):
    async def check(channel: AGIChannel) -> None:
        await channel.set_variable("CALLGUARD_RESULT", "ALLOW")

    daemon = await daemon_factory({"check": check})

    result = await run_classic_agi(
        str(RELAY),
        make_call(),
        env={"CALLGUARD_FASTAGI": daemon.address, "CALLGUARD_RELAY_TIMEOUT": timeout},
    )

    assert result.returncode == 0, result.stderr
    assert result.variables == {"CALLGUARD_RESULT": "ALLOW"}
    assert f"invalid CALLGUARD_RELAY_TIMEOUT {timeout!r}" in result.stderr
    assert "using 35.0" in result.stderr


@pytest.mark.parametrize(
    "stdin",
    [
        b"",
        b"agi_request: x\n",
        b"not an agi line\n\n",
        b"agi_x: " + b"y" * 5000 + b"\n\n",
    ],
)
def test_relay_bad_environment(stdin, closed_port):
    completed = subprocess.run(
        [str(RELAY)],
        input=stdin,
        capture_output=True,
        timeout=10,
        env={**os.environ, "CALLGUARD_FASTAGI": f"127.0.0.1:{closed_port}"},
    )

    assert completed.returncode == 1
    assert completed.stdout == b""
    assert b"exiting without a decision" in completed.stderr


@pytest.mark.parametrize(
    "text, address",
    [
        ("127.0.0.1:4573", ("127.0.0.1", 4573)),
        ("127.0.0.1", ("127.0.0.1", 4573)),
        ("[::1]:4600", ("::1", 4600)),
        ("[::1]", ("::1", 4573)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(text, address):
    assert relay.parse_address(text) == address


def test_network_block_order():
    block = [
        b"agi_request: /var/lib/asterisk/agi-bin/callguard-check.agi\n",
        b"agi_channel: Local/1@x;2\n",
        b"agi_arg_1: 0044\n",
    ]

    sent = relay.network_block(block, "::1", 4573)

    assert sent == (
        b"agi_network: yes\n"
        b"agi_network_script: check\n"
        b"agi_request: agi://[::1]:4573/check\n"
        b"agi_channel: Local/1@x;2\n"
        b"agi_arg_1: 0044\n"
        b"\n"
    )


def test_reply_counter():
    counter = relay.ReplyCounter()
    for _ in range(4):
        counter.command_sent()

    lines = [
        b"HANGUP\n",
        b"200 result=1 (x)\n",
        b"100 result=0 Trying...\n",
        b"200 result=0 Gosub complete\n",
        b"520-Invalid command syntax.  Proper usage follows:\n",
        b"Usage: SET VARIABLE <variablename> <value>\n",
        b"520 End of proper usage.\n",
    ]
    for line in lines:
        counter.reply_line(line)
    assert counter.pending == 1

    counter.reply_line(
        b"511 Command Not Permitted on a dead channel or intercept routine\n"
    )
    assert counter.pending == 0


@pytest.mark.parametrize(
    "line, expected",
    [
        (b'SET VARIABLE CALLGUARD_RESULT "ALLOW"\n', ("CALLGUARD_RESULT", "ALLOW")),
        (b"set variable CALLGUARD_RESULT DENY\n", ("CALLGUARD_RESULT", "DENY")),
        (
            b'SET VARIABLE CALLGUARD_REASON "CALLGUARD_RESULT"\n',
            ("CALLGUARD_REASON", "CALLGUARD_RESULT"),
        ),
        (b"SET VARIABLE CALLGUARD_RESULT\n", None),
        (b"GET VARIABLE CALLGUARD_RESULT\n", None),
        (b'SET VARIABLE CALLGUARD_EMERGENCY "999"\n', ("CALLGUARD_EMERGENCY", "999")),
        (b'set variable X "a \\"b\\""\n', ("X", 'a "b"')),
        (b'SET VARIABLE X ""\n', ("X", "")),
        (b"SET VARIABLE X\n", None),
        (b"GET VARIABLE X\n", None),
    ],
)
def test_parse_set_variable(line, expected):
    assert relay.parse_set_variable(line) == expected


def test_relay_imports_only_stdlib():
    tree = ast.parse(RELAY.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])

    assert modules
    assert modules <= sys.stdlib_module_names | {"__future__"}
