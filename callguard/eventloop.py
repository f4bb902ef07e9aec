"""The event loop the daemon runs on: uvloop when it is installed, else asyncio's own.

uvloop implements asyncio's event loop on libuv, in C. Every FastAGI
session wakes the loop once for the ``agi_*`` block and once for each reply
to a SET VARIABLE, and uvloop spends less CPU time on each of these wake-ups
than asyncio's selector loop (benchmarks/README.md has the figures). The
daemon uses only the asyncio API, so its code is the same on both loops.
"""

import asyncio
import importlib
import importlib.machinery
from collections.abc import Callable

AUTO = "auto"
UVLOOP = "uvloop"
ASYNCIO = "asyncio"
CHOICES = (AUTO, UVLOOP, ASYNCIO)


class LoopUnavailable(Exception):
    """The configured event loop cannot be imported."""


def resolve(choice: str) -> str:
    """Return the loop that ``choice`` (one of CHOICES) runs on: ``uvloop`` or ``asyncio``.

    ``auto`` is uvloop when it imports and asyncio otherwise. Raises
    ``LoopUnavailable`` when ``choice`` is ``uvloop`` and it does not import.
    """
    if choice == ASYNCIO:
        return ASYNCIO
    problem = _uvloop_problem()
    if problem is None:
        return UVLOOP
    if choice == UVLOOP:
        raise LoopUnavailable(f"uvloop is not installed ({problem}); install it with "
                              "pip install uvloop, or write auto or asyncio")
    return ASYNCIO


def _uvloop_problem() -> str | None:
    """Return why a new process could not import uvloop, or None when it could."""
    # A module already imported still imports after it was uninstalled, so a
    # reload searches sys.path as the next start would.
    if importlib.machinery.PathFinder.find_spec(UVLOOP) is None:
        return f"No module named {UVLOOP!r}"
    try:
        importlib.import_module(UVLOOP)
    except ImportError as exc:
        return str(exc)
    return None


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the factory of the loop ``name`` (from resolve()), for asyncio.Runner().

    None means asyncio's default loop.
    """
    if name == UVLOOP:
        return importlib.import_module(UVLOOP).new_event_loop
    return None


def running_loop_name() -> str:
    """Return ``uvloop`` or ``asyncio``: the kind of loop running in this thread."""
    module = type(asyncio.get_running_loop()).__module__
    return UVLOOP if module.split(".")[0] == UVLOOP else ASYNCIO
