"""Normalisation of dialled strings to E.164 and their classification by prefix.

``NumberPlan`` turns a dialled string into a ``Number``, ``PrefixTable`` maps
prefixes to categories, and ``Classifier`` combines both.
"""

from callguard.numbers.categories import CATEGORIES, INTERNATIONAL_CATEGORIES
from callguard.numbers.classify import Classified, Classifier
from callguard.numbers.errors import InvalidNumber, UnclassifiedNumber
from callguard.numbers.number import Number
from callguard.numbers.plan import NumberPlan
from callguard.numbers.table import PrefixRule, PrefixTable, PrefixTableError

__all__ = [
    "CATEGORIES",
    "INTERNATIONAL_CATEGORIES",
    "Classified",
    "Classifier",
    "InvalidNumber",
    "Number",
    "NumberPlan",
    "PrefixRule",
    "PrefixTable",
    "PrefixTableError",
    "UnclassifiedNumber",
]
