"""``callguardctl`` output: a reader that goes away early, and counts in messages."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callguard.cli import ctl
from support import write_config

BIN = Path(sys.executable).parent
SAMPLE_PREFIXES = Path(__file__).resolve().parent.parent / "etc" / "prefixes-gb.csv"
# The status of a process that SIGPIPE ended, as the shell reports it.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

ONE_PREFIX = "prefix,category,description\n01,geographic,United Kingdom landlines\n"
ONE_RATE = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,0.01,,60/60\n"


def run_ctl(*argv: str) -> int:
    """Run callguardctl and return its exit status, as the console script would."""
    try:
        return ctl.main(list(argv))
    except SystemExit as exc:
        return exc.code


def run_into_closed_pipe(*argv: str, buffered: bool) -> subprocess.CompletedProcess:
    """Run the callguardctl script with stdout on a pipe whose read end is closed.

    The read end is closed before the script starts, so its first write to
    stdout fails as it does after ``| head`` has read what it wanted. Buffered,
    that write happens when stdout is flushed; unbuffered, in the first print.
    """
    env = {name: value for name, value in os.environ.items()
           if name != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([str(BIN / "callguardctl"), *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write_end)


@pytest.fixture
def config(tmp_path):
    path = write_config(tmp_path)
    assert run_ctl("--config", str(path), "prefixes", "import", str(SAMPLE_PREFIXES)) == 0
    assert run_ctl("--config", str(path), "rates", "import", str(tmp_path / "rates.csv"),
                   "--trunk", "gamma") == 0
    assert run_ctl("--config", str(path), "block", "1001", "--reason", "fraud") == 0
    return path


@pytest.mark.parametrize("arguments", [
    ["prefixes", "list"],
    ["prefixes", "list", "--json"],
    ["prefixes", "import", str(SAMPLE_PREFIXES)],
    ["rates", "list", "--trunk", "gamma"],
    ["audit"],
    ["audit", "--json"],
    ["blocks"],
    ["alerts"],
    ["check", "09011234567", "--trunk", "gamma", "--offline"],
    ["check-config"],
    ["block", "1002", "--reason", "fraud"],
])
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_closed_pipe_exits_quietly(config, capsys, arguments, buffered):
    run_ctl("--config", str(config), *arguments)
    expected_err = capsys.readouterr().err

    result = run_into_closed_pipe("--config", str(config), *arguments, buffered=buffered)

    assert result.stderr == expected_err
    assert result.returncode == EXIT_BROKEN_PIPE


def test_help_closed_pipe_exits_quietly(config):
    # Buffered only: unbuffered, argparse drops the failed write of its help
    # text by itself and exits 0, just as quietly.
    result = run_into_closed_pipe("--config", str(config), "--help", buffered=True)

    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


def test_unreadable_file_still_reported(config, capsys):
    status = run_ctl("--config", str(config), "rates", "import", "/nonexistent.csv",
                     "--trunk", "gamma")

    err = capsys.readouterr().err
    assert status == 2
    assert err == "/nonexistent.csv: cannot read it: No such file or directory\n"


def test_import_one_prefix_singular(config, tmp_path, capsys):
    path = tmp_path / "one-prefix.csv"
    path.write_text(ONE_PREFIX)

    assert run_ctl("--config", str(config), "prefixes", "import", str(path)) == 0

    assert f"imported 1 prefix from {path}\n" in capsys.readouterr().out


def test_import_one_rate_singular(config, tmp_path, capsys):
    path = tmp_path / "one-rate.csv"
    path.write_text(ONE_RATE)

    assert run_ctl("--config", str(config), "rates", "import", str(path), "--trunk",
                   "gamma") == 0

    assert f"imported 1 rate for trunk gamma from {path}\n" in capsys.readouterr().out
