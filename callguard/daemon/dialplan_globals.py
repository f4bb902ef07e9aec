"""Compare the dialplan's copy of two settings with callguard's own.

The dialplan snippet's ``[globals]`` repeat two settings of callguard.conf
and its prefix table: the emergency numbers (CALLGUARD_EMERGENCY_NUMBERS)
and the outside-line prefix (CALLGUARD_OUTSIDE_PREFIX). When they differ,
emergency calls are at risk, and nothing fails at once:

- a number the dialplan routes as an emergency call but callguard does not
  know is judged as an ordinary number when its trunk leg shows up without a
  check, and can be hung up as barred or unclassified;
- a number callguard treats as an emergency call but the dialplan does not
  route first goes through the check, so while callguard is down the
  dialplan's fail policy decides it, and ``deny`` refuses it;
- with different outside-line prefixes the two read dialled strings apart,
  so ``9999`` is an emergency call for one and not for the other.

The daemon reads both variables over ARI on every connect and after every
reload, and logs a warning for each difference.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable

from callguard.config.fields import ALWAYS_EMERGENCY_NUMBERS
from callguard.numbers.categories import EMERGENCY
from callguard.numbers.classify import Classifier
from callguard.numbers.errors import quote

log = logging.getLogger(__name__)

EMERGENCY_VARIABLE = "CALLGUARD_EMERGENCY_NUMBERS"
OUTSIDE_PREFIX_VARIABLE = "CALLGUARD_OUTSIDE_PREFIX"

# Entries of a list shown in one warning.
MAX_LISTED = 10

# Reads a dialplan global variable, which is "" when it is not set.
ReadVariable = Callable[[str], Awaitable[str]]


def callguard_emergency_numbers(classifier: Classifier) -> set[str]:
    """Return the numbers callguard allows as emergency calls as they are dialled.

    These are emergency_numbers from callguard.conf and the emergency rows
    of the prefix table that name a whole number, the form that the snippet
    documents for CALLGUARD_EMERGENCY_NUMBERS.
    """
    numbers = set(ALWAYS_EMERGENCY_NUMBERS) | set(classifier.plan.emergency_numbers)
    for rule in classifier.table.rules():
        if rule.category == EMERGENCY and rule.prefix.isdigit():
            numbers.add(rule.prefix)
    return numbers


def dialplan_differences(classifier: Classifier, emergency_value: str,
                         outside_prefix_value: str) -> list[str]:
    """Return one message per difference between the dialplan's globals and callguard.

    ``emergency_value`` and ``outside_prefix_value`` are the variables' values,
    empty when unset. A dialplan that sets neither does not use the snippet's
    globals, and nothing is compared; the caller says so.
    """
    messages = []
    if emergency_value:
        listed, invalid = _parse_list(emergency_value)
        if invalid:
            messages.append(
                f"the dialplan's {EMERGENCY_VARIABLE} has entries that are not numbers: "
                f"{_listed(quote(entry) for entry in invalid)}; write digits separated "
                "by commas without spaces, such as 999,112,18000"
            )
        dialplan = listed | set(ALWAYS_EMERGENCY_NUMBERS)
        ours = callguard_emergency_numbers(classifier)
        only_dialplan = sorted(dialplan - ours)
        only_ours = sorted(ours - dialplan)
        if only_dialplan:
            messages.append(
                f"the dialplan's {EMERGENCY_VARIABLE} routes {_listed(only_dialplan)} as "
                "emergency calls, but callguard does not: a trunk leg to such a number "
                "that reaches the trunk without the check is judged as an ordinary "
                "number and can be hung up; add them to emergency_numbers in "
                "callguard.conf"
            )
        if only_ours:
            messages.append(
                f"callguard treats {_listed(only_ours)} as emergency numbers, but the "
                f"dialplan's {EMERGENCY_VARIABLE} does not list them: calls to them go "
                "through the check, so while callguard cannot be reached the dialplan's "
                f"fail policy decides them; add them to {EMERGENCY_VARIABLE} and route "
                "them before the check"
            )

    ours_prefix = classifier.plan.outside_line_prefix
    if (emergency_value or outside_prefix_value) and outside_prefix_value != ours_prefix:
        messages.append(
            f"the dialplan's {OUTSIDE_PREFIX_VARIABLE} is {quote(outside_prefix_value)} but "
            f"callguard.conf's outside_line_prefix is {quote(ours_prefix)}, so the two read "
            "dialled numbers differently, emergency numbers after the prefix included; "
            "set both to the same digits, or both empty"
        )
    return messages


async def compare_dialplan(read_variable: ReadVariable, classifier: Classifier) -> list[str]:
    """Read the dialplan's globals and log each difference from callguard's settings.

    Returns the messages logged. Errors of ``read_variable`` reach the caller.
    """
    emergency_value = (await read_variable(EMERGENCY_VARIABLE)).strip()
    outside_prefix_value = (await read_variable(OUTSIDE_PREFIX_VARIABLE)).strip()
    if not emergency_value and not outside_prefix_value:
        log.info("the dialplan sets no %s, so callguard cannot compare its emergency "
                 "numbers with the dialplan's", EMERGENCY_VARIABLE)
        return []

    messages = dialplan_differences(classifier, emergency_value, outside_prefix_value)
    for message in messages:
        log.warning("%s", message)
    if not messages:
        log.info("the dialplan's %s and %s agree with callguard's settings",
                 EMERGENCY_VARIABLE, OUTSIDE_PREFIX_VARIABLE)
    return messages


def _parse_list(value: str) -> tuple[set[str], list[str]]:
    """Split a comma list as agi/callguard-check.agi does: digits only, no spaces."""
    numbers: set[str] = set()
    invalid: list[str] = []
    for entry in value.split(","):
        if entry.isascii() and entry.isdigit():
            numbers.add(entry)
        else:
            invalid.append(entry)
    return numbers, invalid


def _listed(items: Iterable[str]) -> str:
    items = list(items)
    text = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        text += f" and {len(items) - MAX_LISTED} more"
    return text
