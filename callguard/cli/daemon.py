"""``callguard``: the daemon, run in the foreground (systemd's Type=notify)."""

import argparse
import asyncio
import gc
import logging
import signal

from callguard import __version__
from callguard.cli.common import (EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_argument,
                                  read_config, set_log_level, setup_logging)
from callguard.daemon.app import Application
from callguard.daemon.state import TablesError
from callguard.daemon.systemd import Notifier
from callguard.eventloop import loop_factory, running_loop_name
from callguard.store import StoreError
from callguard.store.engine import mask_url

log = logging.getLogger("callguard")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callguard",
        description="Guard the outbound trunks of an Asterisk PBX against toll fraud "
        "and runaway bills.",
    )
    parser.add_argument("--version", action="version", version=f"callguard {__version__}")
    add_config_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the daemon in the foreground; SIGHUP reloads the "
                        "config, SIGTERM stops")
    return parser


async def stop_quietly(app: Application) -> None:
    try:
        await app.stop()
    except Exception as exc:
        log.debug("stopping the half-started daemon failed too: %r", exc)


def settle_heap() -> None:
    """Move what is loaded now out of the garbage collector's sight.

    The prefix table, the rate decks and the config are hundreds of
    thousands of objects that live until the next reload. Left in the
    collector's oldest generation, each full collection walks all of them
    while a FastAGI session waits. Unfreezing first lets one collection free
    what a reload left behind; it pauses the loop once, for about as long as
    a full collection takes.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def serve(app: Application, notifier: Notifier) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)

    try:
        await app.start()
    except BaseException:
        # Whatever started before the failure (the ARI client, the store
        # thread) stops here, so the process ends with the one error.
        await stop_quietly(app)
        raise
    settle_heap()
    # Logged first, so that READY=1 goes out after the line is written.
    log.info("callguard %s ready, on the %s event loop", __version__, running_loop_name())
    notifier.ready("deciding calls")

    async def reload_on_signal() -> None:
        while True:
            await reloads.get()
            notifier.reloading()
            try:
                if await app.reload():
                    set_log_level(app.config.general.log_level)
                settle_heap()
            except Exception:
                # The next SIGHUP must still be read: log this one and go on.
                log.exception("the reload failed unexpectedly")
            finally:
                notifier.ready()

    async def watchdog() -> None:
        # The process pings while it runs. STATUS reports when it cannot see
        # calls, so it never looks healthy while ARI is down.
        shown = None
        while True:
            connected = app.ari_connected
            if connected is not shown:
                notifier.status("deciding calls" if connected is not False
                                else "ARI disconnected: live calls are not metered")
                shown = connected
            if notifier.watchdog_interval:
                notifier.watchdog()
            await asyncio.sleep(min(notifier.watchdog_interval or 5.0, 5.0))

    tasks = [asyncio.create_task(reload_on_signal()), asyncio.create_task(watchdog())]
    try:
        await stopping.wait()
        log.info("stopping: no new sessions; finishing the running ones")
        notifier.stopping()
    finally:
        for task in tasks:
            task.cancel()
        await app.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = read_config(args)
    setup_logging(config.general.log_level, batched=True)

    try:
        app = Application(config, database_override=bool(args.database))
        with asyncio.Runner(loop_factory=loop_factory(config.general.event_loop)) as runner:
            runner.run(serve(app, Notifier()))
    except StoreError as exc:
        log.error("%s", store_failure(config.general.database, exc))
        return EXIT_FAILURE
    except TablesError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def store_failure(database: str, exc: StoreError) -> str:
    """Return the one-line error for a store that failed, naming its database.

    A driver error already names the database URL without its password, so the
    URL is added only when the message lacks it.
    """
    url = mask_url(database)
    if url in str(exc):
        return f"cannot start: {exc}"
    return f"cannot start with the database {url}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
