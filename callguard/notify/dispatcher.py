"""The alert dispatcher: queues alerts in the store's outbox and delivers them.

``submit`` only appends to an in-memory inbox, so a caller on the decision
path never waits. A writer task moves the inbox into the outbox through the
store worker, and the sender task (``OutboxSender``) delivers the due rows.
"""

import asyncio
import logging
from collections import OrderedDict, deque

from callguard.clock import Clock
from callguard.config import Config
from callguard.config.addresses import host_port
from callguard.notify.alert import Alert, outbox_rows
from callguard.notify.sender import OutboxSender
from callguard.notify.webhook import shown_url
from callguard.store import OutboxRecord, StoreError
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

# Alerts held in memory while the store cannot take them; the oldest go first.
INBOX_LIMIT = 10_000
# Dedupe keys remembered in memory, so a repeated alert costs no store query.
KNOWN_KEYS_LIMIT = 4096
STORE_RETRY_SECONDS = 1.0
SETTLE_POLL_SECONDS = 0.005
STOP_GRACE_SECONDS = 2.0


class AlertDispatcher:
    """Delivers alerts by e-mail and webhook through the outbox, with retries.

    Retries wait 10 s, then twice as long each time up to 5 minutes, on the
    injected clock, and a row is given up ``give_up_after`` after it was queued.
    """

    def __init__(self, config: Config, worker: StoreWorker, clock: Clock):
        self._config = config
        self._worker = worker
        self._clock = clock
        self._sender = OutboxSender(config, worker, clock)
        self._inbox: deque[list[OutboxRecord]] = deque()
        self._known_keys: OrderedDict[str, None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._writer_wake = asyncio.Event()
        self._writing = False
        self._stopping = False

    def submit(self, alert: Alert) -> None:
        """Queue ``alert`` for delivery; never blocks and never raises.

        An invalid alert, or one that no transport is configured for, is
        logged and dropped.
        """
        kind = getattr(alert, "kind", "?")
        trunk = getattr(alert, "trunk", None)
        # Alerts such as ari-down concern no trunk.
        described = f"{kind} alert for trunk {trunk}" if trunk else f"{kind} alert"
        try:
            rows = outbox_rows(alert, self._config, self._clock.now())
        except (TypeError, ValueError) as exc:
            log.error("dropping an invalid %s: %s", described, exc)
            return

        if not rows:
            log.warning(
                "not sending the %s because neither [smtp] nor [webhook] is configured: %s",
                described,
                alert.subject,
            )
            return

        key = alert.dedupe_key
        if key is not None and key in self._known_keys:
            log.debug("alert %s is queued already", key)
            return
        if key is not None:
            self._remember(key)

        if len(self._inbox) >= INBOX_LIMIT:
            dropped = self._inbox.popleft()[0]
            log.error(
                "dropping the %s alert for trunk %s because %d alerts wait for the "
                "store: %s",
                dropped.kind,
                dropped.trunk or "-",
                INBOX_LIMIT,
                dropped.subject,
            )
        self._inbox.append(rows)
        self._wake(self._writer_wake)

    async def start(self) -> None:
        """Start the writer and the sender; rows left from before a restart go too."""
        if self._tasks:
            raise RuntimeError("the alert dispatcher is running already")

        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._sender.stopping = False
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="callguard-alert-writer"),
            asyncio.create_task(self._sender.run(), name="callguard-alert-sender"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        self._writer_wake.set()
        self._sender.wake.set()
        log.info("alert delivery started: %s", self._describe())

    async def stop(self) -> None:
        """Store the alerts still in memory, finish the attempt in progress, stop."""
        if not self._tasks:
            return

        self._stopping = True
        self._sender.stopping = True
        self._writer_wake.set()
        self._sender.wake.set()
        grace = STOP_GRACE_SECONDS + self._longest_timeout()
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            # NOTE: a cancelled SMTP attempt runs on in its thread. Its row
            # stays claimed until the lease ends, and is then sent again.
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

        if self._inbox:
            log.error(
                "%d alerts were not stored before stopping and are lost",
                len(self._inbox),
            )
        self._tasks = []
        log.info("alert delivery stopped")

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until every submitted alert is stored and every due row attempted.

        Meant for tests. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        if not self._tasks:
            raise RuntimeError("start() the alert dispatcher before settle()")

        async with asyncio.timeout(timeout):
            while self._inbox or self._writing:
                await asyncio.sleep(SETTLE_POLL_SECONDS)

            # Only a pass that starts after the writes can have seen them.
            serial = self._sender.pass_serial
            self._sender.wake.set()
            while self._sender.idle_serial <= serial:
                await asyncio.sleep(SETTLE_POLL_SECONDS)

    def reconfigure(self, config: Config) -> None:
        """Use the ``[smtp]`` and ``[webhook]`` settings of a reloaded config.

        Rows already queued keep their recipients, and their next attempt uses
        the new settings.
        """
        self._config = config
        self._sender.reconfigure(config)
        log.info("alert delivery reconfigured: %s", self._describe())
        self._wake(self._sender.wake)

    def _remember(self, key: str) -> None:
        self._known_keys[key] = None
        if len(self._known_keys) > KNOWN_KEYS_LIMIT:
            self._known_keys.popitem(last=False)

    def _wake(self, event: asyncio.Event) -> None:
        """Set ``event`` from the loop's thread or any other one."""
        loop = self._loop
        if loop is None:
            return  # start() wakes both tasks

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        if running is loop:
            event.set()
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError as exc:
            log.error("cannot wake the alert dispatcher: %s", exc)

    def _describe(self) -> str:
        smtp, webhook = self._config.smtp, self._config.webhook
        mail = "off" if smtp is None else f"{host_port(smtp.host, smtp.port)} ({smtp.security})"
        hook = "off" if webhook is None else shown_url(webhook.url)
        return f"e-mail {mail}, webhook {hook}"

    def _longest_timeout(self) -> float:
        timeouts = [
            settings.timeout
            for settings in (self._config.smtp, self._config.webhook)
            if settings is not None
        ]
        return max(timeouts, default=0.0)

    async def _write_loop(self) -> None:
        while True:
            if not self._inbox:
                if self._stopping:
                    return
                self._writer_wake.clear()
                await self._writer_wake.wait()
                continue

            rows = self._inbox[0]
            self._writing = True
            try:
                ids = await self._worker.call(self._worker.store.queue_alert, rows)
            except StoreError as exc:
                log.error(
                    "cannot store the %s alert for trunk %s, retrying in %g s: %s",
                    rows[0].kind,
                    rows[0].trunk or "-",
                    STORE_RETRY_SECONDS,
                    exc,
                )
                if self._stopping:
                    return
                await asyncio.sleep(STORE_RETRY_SECONDS)
                continue
            finally:
                self._writing = False

            self._inbox.popleft()
            _log_queued(rows, ids)
            self._sender.wake.set()


def _log_queued(rows: list[OutboxRecord], ids: list[int]) -> None:
    first = rows[0]
    if not ids:
        log.info(
            "alert %s for trunk %s is in the outbox already; not queueing it again",
            first.dedupe_key,
            first.trunk or "-",
        )
        return

    log.info(
        "queued the %s alert for trunk %s as outbox %s: %s",
        first.kind,
        first.trunk or "-",
        ", ".join(str(outbox_id) for outbox_id in ids),
        first.subject,
    )


def _report_crash(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is None:
        return

    log.critical(
        "%s stopped unexpectedly; alerts are not delivered until callguard restarts",
        task.get_name(),
        exc_info=task.exception(),
    )
