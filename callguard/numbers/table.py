"""Prefix tables: longest-prefix rules that map numbers to categories.

A table is a CSV file with the header ``prefix,category,description``. Lines
starting with ``#`` and blank lines are skipped. Home-country numbers are looked
up on their national form (``09``, ``118``), all others on E.164 with ``+``
(``+870``). A bare ``+`` row matches every number of another country.
"""

import csv
import importlib.resources
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from callguard.numbers.categories import CATEGORIES

logger = logging.getLogger(__name__)

HEADER = ("prefix", "category", "description")
COMMENT_MARK = "#"
PLUS = "+"
DEFAULT_TABLE = "prefixes-gb.csv"
# National forms have at most 15 digits plus a national prefix of a few digits.
MAX_PREFIX_DIGITS = 18


class PrefixTableError(ValueError):
    """A prefix table that cannot be loaded. The message starts with ``file:line:``."""


@dataclass(frozen=True, slots=True)
class PrefixRule:
    """One row of a prefix table."""

    prefix: str
    category: str
    description: str


class PrefixTable:
    """Prefix rules, looked up by longest match in O(key length) dictionary probes."""

    def __init__(self, source: str = "<rules>") -> None:
        self.source = source
        self._rules: dict[str, PrefixRule] = {}
        self._line_numbers: dict[str, int] = {}
        self._max_prefix_length = 0

    def __repr__(self) -> str:
        return f"PrefixTable(source={self.source!r}, rules={len(self._rules)})"

    def __len__(self) -> int:
        return len(self._rules)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "PrefixTable":
        """Load a table from a CSV file. Raises ``PrefixTableError``."""
        source = os.fspath(path)
        try:
            # utf-8-sig drops the byte order mark that spreadsheet programs write.
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise PrefixTableError(
                f"{source}: cannot read the prefix table: {exc}"
            ) from exc

        return cls._from_text(text, source)

    @classmethod
    def from_rows(
        cls, rows: Iterable[tuple[str, str, str]], source: str = "<rows>"
    ) -> "PrefixTable":
        """Build a table from ``(prefix, category, description)`` rows.

        Errors name the row by its position, starting at 1.
        """
        table = cls(source)
        for position, row in enumerate(rows, start=1):
            if len(row) != len(HEADER):
                raise PrefixTableError(
                    f"{source}:{position}: expected 3 fields (prefix, category, "
                    f"description), found {len(row)}: {row!r}"
                )

            table._add(position, *row)

        return table

    @classmethod
    def default(cls) -> "PrefixTable":
        """Load the GB table shipped with callguard."""
        resource = (
            importlib.resources.files("callguard")
            .joinpath("data")
            .joinpath(DEFAULT_TABLE)
        )
        return cls._from_text(resource.read_text(encoding="utf-8"), DEFAULT_TABLE)

    def match(self, key: str) -> PrefixRule | None:
        """Return the rule with the longest prefix of ``key``, or None."""
        rules = self._rules
        for length in range(min(len(key), self._max_prefix_length), 0, -1):
            rule = rules.get(key[:length])
            if rule is not None:
                return rule

        return None

    def rules(self) -> list[PrefixRule]:
        """Return the rules in the order they were defined."""
        return list(self._rules.values())

    def line_number(self, prefix: str) -> int | None:
        """Return the line (or row position) that defined ``prefix``, or None."""
        return self._line_numbers.get(prefix)

    @classmethod
    def _from_text(cls, text: str, source: str) -> "PrefixTable":
        table = cls(source)
        header_seen = False
        for line_number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith(COMMENT_MARK):
                continue

            fields = _split_csv_line(line, source, line_number)
            if not header_seen:
                if tuple(field.lower() for field in fields) != HEADER:
                    raise PrefixTableError(
                        f"{source}:{line_number}: header row is missing; the first row "
                        f"must be {','.join(HEADER)!r}, found {stripped!r}"
                    )

                header_seen = True
                continue

            if len(fields) < len(HEADER):
                raise PrefixTableError(
                    f"{source}:{line_number}: expected 3 columns (prefix, category, "
                    f"description), found {len(fields)}; give a field for every "
                    "column and leave the description empty when there is none, "
                    "like '09,premium,'"
                )
            if len(fields) > len(HEADER):
                raise PrefixTableError(
                    f"{source}:{line_number}: expected 3 columns (prefix, category, "
                    f"description), found {len(fields)}; quote a description that "
                    "contains commas"
                )

            table._add(line_number, *fields)

        if not header_seen:
            raise PrefixTableError(
                f"{source}: header row {','.join(HEADER)!r} is missing, "
                "because the file has no rows"
            )

        logger.info("loaded %d prefix rules from %s", len(table), source)
        return table

    def _add(
        self, line_number: int, prefix: str, category: str, description: str
    ) -> None:
        where = f"{self.source}:{line_number}"
        fields = (prefix, category, description)
        if not all(isinstance(field, str) for field in fields):
            raise PrefixTableError(
                f"{where}: every field must be a string, found {fields!r}"
            )

        prefix = prefix.strip()
        category = category.strip()
        description = description.strip()

        _check_prefix(prefix, where)

        if category not in CATEGORIES:
            raise PrefixTableError(
                f"{where}: category {category!r} is unknown; use one of "
                f"{', '.join(sorted(CATEGORIES))}"
            )

        if prefix in self._rules:
            raise PrefixTableError(
                f"{where}: prefix {prefix!r} is already defined on line "
                f"{self._line_numbers[prefix]}; remove one of the two rows"
            )

        self._rules[prefix] = PrefixRule(prefix, category, description)
        self._line_numbers[prefix] = line_number
        self._max_prefix_length = max(self._max_prefix_length, len(prefix))


def _split_csv_line(line: str, source: str, line_number: int) -> list[str]:
    try:
        fields = next(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise PrefixTableError(
            f"{source}:{line_number}: malformed CSV: {exc}"
        ) from None

    return [field.strip() for field in fields]


def _check_prefix(prefix: str, where: str) -> None:
    digits = prefix.removeprefix(PLUS)
    international = prefix.startswith(PLUS)
    well_formed = (
        (international or digits)
        and (not digits or (digits.isascii() and digits.isdigit()))
        and len(digits) <= MAX_PREFIX_DIGITS
        and not (international and digits.startswith("0"))
    )
    if not well_formed:
        raise PrefixTableError(
            f"{where}: prefix {prefix!r} is invalid; write national digits such as "
            "'09', '+' and a country code such as '+870', or '+' alone for every "
            "other country"
        )
