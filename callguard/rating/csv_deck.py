"""Reading of rate deck CSV files.

The file is UTF-8 (a byte order mark is allowed) with the header
``prefix,description,rate,connection_fee,increments``. The columns may come in any
order. Lines whose first non-blank character is ``#`` are comments, and blank lines
are skipped. Fields are trimmed, and a description that contains a comma must be
quoted. An empty connection_fee means no fee.
"""

import codecs
import csv
import os
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TypeVar

from callguard.rating.builder import DeckBuilder, RateClass
from callguard.rating.errors import ErrorList
from callguard.rating.fields import parse_connection_fee, parse_prefix, parse_rate
from callguard.rating.increments import Increments
from callguard.text import invalid_utf8

COLUMNS = ("prefix", "description", "rate", "connection_fee", "increments")
HEADER = ",".join(COLUMNS)
# An example row by column name, for the advice on a row with too few fields.
EXAMPLE_ROW = {
    "prefix": "34",
    "description": "Spain",
    "rate": "0.05",
    "connection_fee": "",
    "increments": "60/60",
}
COMMENT_MARK = "#"

T = TypeVar("T")


class DataLines:
    """The decoded lines of a deck file without comments and blank lines.

    ``line_number`` is the 1-based number of the last line returned, which is the last
    line of the row that ``csv.reader`` has just produced. ``row_start`` is the number
    of the first line returned since the last ``start_row()``, where the row being
    read begins. Each line is decoded on its own so that a line that is not UTF-8 is
    reported with its own number and skipped.
    """

    def __init__(self, raw_lines: Iterable[bytes], errors: ErrorList) -> None:
        self._numbered = enumerate(raw_lines, start=1)
        self._errors = errors
        self.line_number = 0
        self.row_start = 0
        self._row_started = False

    def start_row(self) -> None:
        """Make the next line returned the first line of a new row."""
        self._row_started = False

    def __iter__(self) -> "DataLines":
        return self

    def __next__(self) -> str:
        for number, raw in self._numbered:
            self.line_number = number
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]

            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._errors.add(number, invalid_utf8(exc)[1])
                continue

            stripped = line.strip()
            if stripped and not stripped.startswith(COMMENT_MARK):
                if not self._row_started:
                    self._row_started = True
                    self.row_start = number
                return line
        raise StopIteration


def read_csv(path: str | os.PathLike) -> DeckBuilder:
    """Read the deck at ``path`` into a DeckBuilder that contains its rows and errors.

    Raises OSError if the file cannot be opened. Decoding and CSV syntax errors are
    recorded in the builder's error list, like invalid fields. A CSV syntax error
    ends the reading, because the rows after it cannot be told apart reliably.
    """
    source = os.fspath(path)
    builder = DeckBuilder(source)

    with open(path, "rb") as file:
        lines = DataLines(file, builder.errors)
        try:
            _read_rows(lines, builder)
        except csv.Error as exc:
            # An unclosed quote makes the csv module read on to a later line, so
            # the error is reported where the row begins.
            where = ""
            if lines.row_start != lines.line_number:
                where = f" in the row that runs from this line to line {lines.line_number}"
            builder.errors.add(
                lines.row_start, f"the CSV is malformed ({exc}){where}; fix the quoting"
            )
    return builder


def _read_rows(lines: DataLines, builder: DeckBuilder) -> None:
    reader = csv.reader(lines, strict=True)
    lines.start_row()
    header = next(reader, None)
    if header is None:
        builder.errors.add(
            None, f"the header is missing; the first row must be {HEADER}"
        )
        return

    positions = _column_positions(header, lines.line_number, builder)
    if positions is None:
        return

    field_count = len(header)
    in_order = positions == list(range(field_count))
    # The header names each of COLUMNS once, so the example follows its order.
    example = ",".join(EXAMPLE_ROW[name.strip().lower()] for name in header)
    parser = _RowParser(builder)
    while True:
        lines.start_row()
        row = next(reader, None)
        if row is None:
            break
        line = lines.line_number
        if len(row) < field_count:
            builder.errors.add(
                line,
                f"the row has {len(row)} fields but the header has {field_count}; "
                "give a field for every column and leave description or "
                f"connection_fee empty when there is none, like {example}",
            )
            continue
        if len(row) > field_count:
            builder.errors.add(
                line,
                f"the row has {len(row)} fields but the header has {field_count}; "
                "quote a description that contains a comma",
            )
            continue

        if not in_order:
            row = [row[position] for position in positions]
        parser.add_row(row, line)


def _column_positions(
    header: list[str], line: int, builder: DeckBuilder
) -> list[int] | None:
    """Return the position of each of COLUMNS in ``header``, or None on errors."""
    names = [name.strip().lower() for name in header]
    if not any(name in COLUMNS for name in names):
        builder.errors.add(
            line,
            f"the header is missing, found {','.join(header)!r}; the first row must "
            f"be {HEADER}",
        )
        return None

    valid = True
    seen: set[str] = set()
    for name in names:
        if name not in COLUMNS:
            builder.errors.add(
                line,
                f"header column {name!r} is unknown; the header must be {HEADER}",
            )
            valid = False
        elif name in seen:
            builder.errors.add(
                line,
                f"header column {name!r} appears twice; the header must be {HEADER}",
            )
            valid = False
        seen.add(name)

    for name in COLUMNS:
        if name not in names:
            builder.errors.add(
                line, f"header column {name!r} is missing; the header must be {HEADER}"
            )
            valid = False

    if not valid:
        return None
    return [names.index(name) for name in COLUMNS]


class _RowParser:
    """Parses deck rows in COLUMNS order and adds them to a DeckBuilder.

    Decks repeat the same few rates, fees, increments and descriptions on many rows,
    so each distinct text is parsed once and all rows share the resulting objects.
    Rows with the same four texts after the prefix share one RateClass.
    """

    def __init__(self, builder: DeckBuilder) -> None:
        self._builder = builder
        self._classes: dict[tuple[str, ...], RateClass] = {}
        self._descriptions: dict[str, str] = {}
        self._rates: dict[str, Decimal] = {}
        self._fees: dict[str, Decimal] = {}
        self._increments: dict[str, Increments] = {}

    def add_row(self, row: list[str], line: int) -> None:
        """Add the row at ``line`` to the builder, or record its errors there."""
        errors = self._builder.errors
        prefix = row[0].strip()
        try:
            parse_prefix(prefix)
        except ValueError as exc:
            errors.add(line, str(exc))
            prefix = None

        key = (row[1], row[2], row[3], row[4])
        rate_class = self._classes.get(key)
        if rate_class is None:
            rate_class = self._parse_rate_class(key, line)

        if prefix is not None and rate_class is not None:
            self._builder.add(line, prefix, rate_class)

    def _parse_rate_class(self, key: tuple[str, ...], line: int) -> RateClass | None:
        description, rate_text, fee_text, increments_text = key
        errors = self._builder.errors
        error_count = errors.count

        rate = _parse_shared(self._rates, rate_text.strip(), parse_rate, line, errors)
        fee = _parse_shared(
            self._fees, fee_text.strip(), parse_connection_fee, line, errors
        )
        increments = _parse_shared(
            self._increments, increments_text.strip(), Increments.parse, line, errors
        )
        if errors.count > error_count:
            return None

        description = description.strip()
        description = self._descriptions.setdefault(description, description)
        rate_class = self._builder.share(RateClass(description, rate, fee, increments))
        self._classes[key] = rate_class
        return rate_class


def _parse_shared(
    cache: dict[str, T],
    text: str,
    parse: Callable[[str], T],
    line: int,
    errors: ErrorList,
) -> T | None:
    """Parse ``text`` once and return the cached result, or None after an error."""
    value = cache.get(text)
    if value is not None:
        return value

    try:
        value = parse(text)
    except ValueError as exc:
        errors.add(line, str(exc))
        return None

    cache[text] = value
    return value
