"""Build what decisions read (number plan, prefix table, rate decks) from a config."""

import logging
from dataclasses import dataclass

from callguard.config import Config, TrunkConfig
from callguard.numbers import Classifier, NumberPlan, PrefixTable, PrefixTableError
from callguard.numbers.classify import home_rule_errors, with_home_rule_errors
from callguard.numbers.table import DEFAULT_TABLE
from callguard.policy.engine import PolicyState
from callguard.rating import Increments, RateDeck, RateDeckError, Tariff

log = logging.getLogger(__name__)


class TablesError(ValueError):
    """Errors in the prefix table and the rate decks, collected from every file.

    ``errors`` contains one PrefixTableError or RateDeckError per invalid file.
    The message joins their messages, one a line.
    """

    def __init__(self, errors: list[PrefixTableError | RateDeckError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(error) for error in errors))


@dataclass(frozen=True)
class LoadedTables:
    """The policy state plus the tables behind it, for copying into the store."""

    state: PolicyState
    prefixes: PrefixTable
    prefix_source: str


def load_prefix_table(config: Config) -> tuple[PrefixTable, str]:
    path = config.general.prefixes
    if path is None:
        return PrefixTable.default(), f"built-in {DEFAULT_TABLE}"
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

    Raises TablesError with the errors of every invalid file, whose messages
    name the file and line, so that one pass shows what to fix in all of them.
    """
    errors: list[PrefixTableError | RateDeckError] = []
    plan = number_plan(config)
    try:
        table, source = load_prefix_table(config)
    except PrefixTableError as exc:
        errors.append(with_home_rule_errors(exc, plan))
    else:
        home_errors = home_rule_errors(plan, table)
        if home_errors is not None:
            errors.append(home_errors)

    decks: dict[str, RateDeck] = {}
    defaults: dict[str, Tariff] = {}
    for name, trunk in config.trunks.items():
        if trunk.rates is not None:
            try:
                decks[name] = RateDeck.from_csv(trunk.rates)
            except RateDeckError as exc:
                errors.append(exc)
            else:
                log.info("%s: loaded %d rates from %s", name, len(decks[name]), trunk.rates)
        tariff = default_tariff(trunk)
        if tariff is not None:
            defaults[name] = tariff
    if errors:
        raise TablesError(errors)

    state = PolicyState(
        config=config,
        classifier=Classifier(plan, table),
        decks=decks,
        default_tariffs=defaults,
    )
    return LoadedTables(state=state, prefixes=table, prefix_source=source)
