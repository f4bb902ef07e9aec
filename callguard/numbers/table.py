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
from callguard.rating.errors import MAX_REPORTED_ERRORS
from callguard.text import invalid_utf8, plural

logger = logging.getLogger(__name__)

HEADER = ("prefix", "category", "description")
COMMENT_MARK = "#"
PLUS = "+"
DEFAULT_TABLE = "prefixes-gb.csv"
# National forms have at most 15 digits plus a national prefix of a few digits.
MAX_PREFIX_DIGITS = 18


class PrefixTableError(ValueError):
    """A prefix table that cannot be loaded.

    ``errors`` contains up to MAX_REPORTED_ERRORS messages, each starting with
    ``file:line:``, or ``file:`` for a problem of the whole file. ``error_count``
    is the number of errors found, reported or not. The message lists the
    reported errors, one a line. ``table`` contains the rows that were valid,
    when the file could be read row by row, so that later checks of those
    rows can report their errors in the same pass.
    """

    def __init__(self, *errors: str, error_count: int | None = None,
                 table: "PrefixTable | None" = None) -> None:
        self.errors = errors
        self.error_count = len(errors) if error_count is None else error_count
        self.table = table

        lines = list(errors)
        omitted = self.error_count - len(errors)
        if omitted > 0:
            lines.append(f"... and {plural(omitted, 'more error')}")
        super().__init__("\n".join(lines))


class _InvalidRow(ValueError):
    """A row that cannot be added, with the problem and its fix as the message."""


class _ErrorList:
    """The errors found while loading one table, in the order they were found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.messages: list[str] = []
        self.count = 0

    def add(self, line_number: int, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED_ERRORS:
            self.messages.append(f"{self.source}:{line_number}: {message}")

    def raise_if_any(self, table: "PrefixTable | None" = None) -> None:
        if self.count:
            raise PrefixTableError(*self.messages, error_count=self.count, table=table)


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
            data = Path(path).read_bytes()
        except OSError as exc:
            raise PrefixTableError(
                f"{source}: cannot read the prefix table: {exc}"
            ) from exc
        try:
            # utf-8-sig drops the byte order mark that spreadsheet programs write.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line, message = invalid_utf8(exc)
            raise PrefixTableError(f"{source}:{line}: {message}") from None

        return cls._from_text(text, source)

    @classmethod
    def from_rows(
        cls, rows: Iterable[tuple[str, str, str]], source: str = "<rows>"
    ) -> "PrefixTable":
        """Build a table from ``(prefix, category, description)`` rows.

        Raises ``PrefixTableError`` listing every invalid row, each named by its
        position, starting at 1.
        """
        table = cls(source)
        errors = _ErrorList(source)
        for position, row in enumerate(rows, start=1):
            try:
                if len(row) != len(HEADER):
                    raise _InvalidRow(
                        f"expected 3 fields (prefix, category, description), found "
                        f"{len(row)}: {row!r}"
                    )
                table._add(position, *row)
            except _InvalidRow as exc:
                errors.add(position, str(exc))

        errors.raise_if_any()
        return table

    @classmethod
    def default(cls) -> "PrefixTable":
        """Load the GB table shipped with callguard."""
        resource = (
            importlib.resources.files("callguard")
            .joinpath("data")
            .joinpath(DEFAULT_TABLE)
        )
        return cls._from_text(resource.read_text(encoding="utf-8"), DEFAULT_TABLE,
                              label=f"built-in {DEFAULT_TABLE}")

    def match(self, key: str) -> PrefixRule | None:
        """Return the rule with the longest prefix of ``key``, or None."""
        rules = self._rules
        for length in range(min(len(key), self._max_prefix_length), 0, -1):
            rule = rules.get(key[:length])
            if rule is not None:
                return rule

        return None

    def exact(self, prefix: str) -> PrefixRule | None:
        """Return the rule whose prefix is exactly ``prefix``, or None."""
        return self._rules.get(prefix)

    def rules(self) -> list[PrefixRule]:
        """Return the rules in the order they were defined."""
        return list(self._rules.values())

    def line_number(self, prefix: str) -> int | None:
        """Return the line (or row position) that defined ``prefix``, or None."""
        return self._line_numbers.get(prefix)

    @classmethod
    def _from_text(cls, text: str, source: str, label: str = "") -> "PrefixTable":
        """Parse a whole CSV file, collecting the errors of every row.

        A missing header ends the parsing, because the rows cannot be read
        without it. Each row is one line, so a row with broken quoting does not
        affect the rows after it. ``label`` names the table in the log line
        instead of ``source``.
        """
        table = cls(source)
        errors = _ErrorList(source)
        header_seen = False
        for line_number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith(COMMENT_MARK):
                continue

            if not header_seen:
                _check_header(line, source, line_number)
                header_seen = True
                continue

            try:
                fields = _split_csv_line(line)
                _check_column_count(fields, stripped)
                table._add(line_number, *fields)
            except _InvalidRow as exc:
                errors.add(line_number, str(exc))

        if not header_seen:
            raise PrefixTableError(
                f"{source}: header row {','.join(HEADER)!r} is missing, "
                "because the file has no rows"
            )

        errors.raise_if_any(table)
        if not len(table):
            # Every dialled number but an emergency number would then be
            # denied as unclassified.
            raise PrefixTableError(
                f"{source}: contains no prefixes, so every call but an emergency call "
                "would be denied; add rows under the header"
            )
        logger.info("loaded %d prefix rules from %s", len(table), label or source)
        return table

    def _add(
        self, line_number: int, prefix: str, category: str, description: str
    ) -> None:
        """Add one row. Raises ``_InvalidRow`` for a row that cannot be added."""
        fields = (prefix, category, description)
        if not all(isinstance(field, str) for field in fields):
            raise _InvalidRow(f"every field must be a string, found {fields!r}")

        prefix = prefix.strip()
        category = category.strip()
        description = description.strip()

        _check_prefix(prefix)

        if category not in CATEGORIES:
            raise _InvalidRow(
                f"category {category!r} is unknown; use one of "
                f"{', '.join(sorted(CATEGORIES))}"
            )

        if prefix in self._rules:
            raise _InvalidRow(
                f"prefix {prefix!r} is already defined on line "
                f"{self._line_numbers[prefix]}; remove one of the two rows"
            )

        self._rules[prefix] = PrefixRule(prefix, category, description)
        self._line_numbers[prefix] = line_number
        self._max_prefix_length = max(self._max_prefix_length, len(prefix))


def _check_header(line: str, source: str, line_number: int) -> None:
    """Raise ``PrefixTableError`` unless ``line`` is the header, in any case."""
    try:
        fields = _split_csv_line(line)
    except _InvalidRow as exc:
        raise PrefixTableError(f"{source}:{line_number}: {exc}") from None

    if tuple(field.lower() for field in fields) != HEADER:
        raise PrefixTableError(
            f"{source}:{line_number}: header row is missing; the first row "
            f"must be {','.join(HEADER)!r}, found {line.strip()!r}"
        )


def _split_csv_line(line: str) -> list[str]:
    try:
        fields = next(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise _InvalidRow(
            f"malformed CSV in {line.strip()!r} ({exc}); fix the quoting, like "
            "'0871,premium,\"Business rate, high service charge\"'"
        ) from None

    return [field.strip() for field in fields]


def _check_column_count(fields: list[str], row: str) -> None:
    if len(fields) < len(HEADER):
        raise _InvalidRow(
            f"expected 3 columns (prefix, category, description), found "
            f"{len(fields)} in {row!r}; give a field for every column and leave "
            "the description empty when there is none, like '09,premium,'"
        )

    if len(fields) > len(HEADER):
        raise _InvalidRow(
            f"expected 3 columns (prefix, category, description), found "
            f"{len(fields)} in {row!r}; quote a description that contains commas"
        )


def _check_prefix(prefix: str) -> None:
    digits = prefix.removeprefix(PLUS)
    international = prefix.startswith(PLUS)
    well_formed = (
        (international or digits)
        and (not digits or (digits.isascii() and digits.isdigit()))
        and len(digits) <= MAX_PREFIX_DIGITS
        and not (international and digits.startswith("0"))
    )
    if not well_formed:
        raise _InvalidRow(
            f"prefix {prefix!r} is invalid; write national digits such as "
            "'09', '+' and a country code such as '+870', or '+' alone for every "
            "other country"
        )
