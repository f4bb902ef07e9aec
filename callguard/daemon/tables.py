"""Copy the prefix table and rate decks, whose CSV files are the source of truth, into the store."""

import hashlib
import logging
from pathlib import Path

from callguard.config import Config
from callguard.daemon.state import LoadedTables
from callguard.store import DATASET_RATES
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def deck_rows(deck):
    for tariff in deck.tariffs():
        yield (tariff.prefix, tariff.description, tariff.rate, tariff.connection_fee,
               tariff.increments.first, tariff.increments.later)


def rates_source(store, trunk: str) -> str | None:
    """Return the source recorded by the last rate import of ``trunk``, if any."""
    for record in store.list_imports():
        if record.dataset == DATASET_RATES and record.trunk == trunk:
            return record.source
    return None


async def copy_tables_to_store(worker: StoreWorker, config: Config, tables: LoadedTables) -> None:
    store = worker.store
    rules = [(r.prefix, r.category, r.description) for r in tables.prefixes.rules()]
    # The store logs the count it stored.
    await worker.call(store.replace_prefixes, rules, tables.prefix_source)

    for name, trunk in config.trunks.items():
        deck = tables.state.decks.get(name)
        if deck is None or trunk.rates is None:
            continue
        source = f"{trunk.rates} sha256:{file_digest(trunk.rates)}"
        if await worker.call(rates_source, store, name) == source:
            log.info("%s: rates in the store match %s", name, trunk.rates)
            continue
        count = await worker.call(store.replace_rates, name, deck_rows(deck), source)
        log.info("%s: stored %d rates from %s", name, count, trunk.rates)
