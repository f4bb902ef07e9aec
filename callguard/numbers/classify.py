"""Classification of dialled strings into the categories that policies bar."""

from dataclasses import dataclass

from callguard.numbers.categories import EMERGENCY, INTERNATIONAL, INTERNATIONAL_PREMIUM
from callguard.numbers.errors import UnclassifiedNumber, quote
from callguard.numbers.number import Number
from callguard.numbers.plan import NumberPlan
from callguard.numbers.table import PLUS, PrefixTable, PrefixTableError
from callguard.rating.errors import MAX_REPORTED_ERRORS

CONFIGURED_EMERGENCY_DESCRIPTION = "emergency number from the configuration"
PREMIUM_ABROAD_DESCRIPTION = "Premium rate number in {region}, by phonenumbers' number ranges"


@dataclass(frozen=True, slots=True)
class Classified:
    """A normalised number with the prefix rule that classified it.

    ``prefix`` is the table prefix that matched (``09``, ``+870``), or the number
    itself for a configured emergency number that the table lacks.
    ``emergency`` is True for configured emergency numbers and for numbers of the
    table category ``emergency``.
    """

    number: Number
    category: str
    prefix: str
    description: str
    emergency: bool


class Classifier:
    """Classifies dialled strings with a number plan and a prefix table.

    Raises ``PrefixTableError`` if the table has rules that can never match
    because they write home-country numbers in E.164 form (``+44...``).
    """

    def __init__(self, plan: NumberPlan, table: PrefixTable) -> None:
        self.plan = plan
        self.table = table
        _check_home_rules(plan, table)

    def classify(self, dialled: str) -> Classified:
        """Normalise ``dialled`` and return its category.

        Configured emergency numbers come first and are always category
        ``emergency``, whatever category the table assigns. Raises
        ``InvalidNumber`` for a malformed number and ``UnclassifiedNumber`` when
        no rule matches.
        """
        plan = self.plan
        digits = plan.plain_national_digits(dialled)
        # A plain national number has a single emergency form: its digits.
        forms = (digits,) if digits is not None else plan.emergency_forms(dialled)
        emergency_number = plan.emergency_among(forms) or self._table_emergency(forms)
        if emergency_number is not None:
            return self.classify_emergency(dialled, emergency_number)

        if digits is not None:
            number = plan.national_number(dialled, digits)
        else:
            number = plan.normalise(dialled)
        rule = self.table.match(number.table_key)
        if rule is not None and rule.category == EMERGENCY and rule.prefix != number.table_key:
            # Emergency calls skip every barring and limit, so an emergency row
            # matches its number exactly: 9990 or 112112 is not 999 or 112.
            rule = None
        if rule is None:
            raise UnclassifiedNumber(
                f"no rule of prefix table {self.table.source} matches {quote(dialled)} "
                f"(looked up as {number.table_key!r}); add a row for it"
            )

        category, description = rule.category, rule.description
        if category == INTERNATIONAL and self.plan.is_premium_rate(number):
            # Revenue-share fraud dials premium ranges abroad. A country let
            # through by international_allow must not open them.
            category = INTERNATIONAL_PREMIUM
            description = PREMIUM_ABROAD_DESCRIPTION.format(region=number.region or "?")

        return Classified(
            number=number,
            category=category,
            prefix=rule.prefix,
            description=description,
            emergency=category == EMERGENCY,
        )

    def _table_emergency(self, forms: list[str]) -> str | None:
        """Return the table's emergency row that one of a dialled string's
        ``forms`` (from ``NumberPlan.emergency_forms``) is, or None.

        The first, plain form is checked too, because normalise() strips an
        outside-line prefix that leads it, so with prefix 1 it would read 18000
        as 8000.
        """
        for form in forms:
            if not form.isdigit():
                continue
            # An emergency row matches its number exactly, as classify() requires.
            rule = self.table.exact(form)
            if rule is not None and rule.category == EMERGENCY:
                return form
        return None

    def classify_emergency(self, dialled: str, emergency_number: str) -> Classified:
        """Return the classification of ``dialled`` as the emergency number
        ``emergency_number``, without reading the rest of the number plan."""
        number = Number(
            dialled=dialled,
            e164="",
            national=emergency_number,
            country_code=self.plan.country_code,
            region=self.plan.home_country,
            short_code=True,
        )

        rule = self.table.match(emergency_number)
        prefix = emergency_number
        description = CONFIGURED_EMERGENCY_DESCRIPTION
        if rule is not None and rule.category == EMERGENCY:
            prefix = rule.prefix
            description = rule.description

        return Classified(
            number=number,
            category=EMERGENCY,
            prefix=prefix,
            description=description,
            emergency=True,
        )


def _check_home_rules(plan: NumberPlan, table: PrefixTable) -> None:
    """Raise what home_rule_errors() returns, if anything."""
    errors = home_rule_errors(plan, table)
    if errors is not None:
        raise errors


def home_rule_errors(plan: NumberPlan, table: PrefixTable) -> PrefixTableError | None:
    """Return a ``PrefixTableError`` listing the first rows that write home numbers
    in E.164 form, in file order, or None when there are none."""
    home_e164 = f"{PLUS}{plan.country_code}"
    messages = []
    count = 0
    for rule in table.rules():
        if not rule.prefix.startswith(home_e164):
            continue

        count += 1
        if len(messages) == MAX_REPORTED_ERRORS:
            continue
        national = plan.national_prefix + rule.prefix[len(home_e164) :]
        messages.append(
            f"{table.source}:{table.line_number(rule.prefix)}: prefix {rule.prefix!r} "
            f"can never match, because numbers with the home country code "
            f"{home_e164} are looked up on their national form; "
            f"write it as {national!r}"
        )
    if not count:
        return None
    return PrefixTableError(*messages, error_count=count)


def with_home_rule_errors(error: PrefixTableError, plan: NumberPlan) -> PrefixTableError:
    """Return ``error`` with the home-number rows among its table's valid rows added."""
    if error.table is None:
        return error
    home_errors = home_rule_errors(plan, error.table)
    if home_errors is None:
        return error
    messages = error.errors + home_errors.errors
    reported = messages[:MAX_REPORTED_ERRORS]
    return PrefixTableError(*reported, error_count=error.error_count + home_errors.error_count)
