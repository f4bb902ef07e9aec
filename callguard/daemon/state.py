"""Build what decisions read (number plan, prefix table, rate decks) from a config."""

import logging
from dataclasses import dataclass

from callguard.config import Config, TrunkConfig
from callguard.numbers import Classifier, NumberPlan, PrefixTable
from callguard.policy.engine import PolicyState
from callguard.rating import Increments, RateDeck, Tariff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedTables:
    """The policy state plus the tables behind it, for copying into the store."""

    state: PolicyState
    prefixes: PrefixTable
    prefix_source: str


def load_prefix_table(config: Config) -> tuple[PrefixTable, str]:
    path = config.general.prefixes
    if path is None:
        return PrefixTable.default(), "built-in GB table"
    return PrefixTable.from_csv(path), str(path)


def default_tariff(trunk: TrunkConfig) -> Tariff | None:
    rate = trunk.default_rate
    if rate is None:
        return None
    return Tariff.default(rate.rate, rate.connection_fee, Increments(rate.first, rate.later))


def number_plan(config: Config) -> NumberPlan:
    """Return the dialling plan that ``config``'s [general] section describes."""
    general = config.general
    return NumberPlan(
        home_country=general.home_country,
        outside_line_prefix=general.outside_line_prefix,
        emergency_numbers=general.emergency_numbers,
    )


def build_state(config: Config) -> LoadedTables:
    """Load the prefix table and every trunk's rate deck named in ``config``.

    Raises the loaders' own errors (PrefixTableError, RateDeckError), whose
    messages name the file and line.
    """
    table, source = load_prefix_table(config)
    plan = number_plan(config)

    decks: dict[str, RateDeck] = {}
    defaults: dict[str, Tariff] = {}
    for name, trunk in config.trunks.items():
        if trunk.rates is not None:
            decks[name] = RateDeck.from_csv(trunk.rates)
            log.info("%s: loaded %d rates from %s", name, len(decks[name]), trunk.rates)
        tariff = default_tariff(trunk)
        if tariff is not None:
            defaults[name] = tariff

    state = PolicyState(
        config=config,
        classifier=Classifier(plan, table),
        decks=decks,
        default_tariffs=defaults,
    )
    return LoadedTables(state=state, prefixes=table, prefix_source=source)
