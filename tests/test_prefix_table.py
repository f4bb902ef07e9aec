"""Prefix tables: CSV loading, errors, longest-prefix lookup and the GB table."""

import codecs
from pathlib import Path

import pytest

from callguard.numbers import (
    CATEGORIES,
    INTERNATIONAL_CATEGORIES,
    Classifier,
    NumberPlan,
    PrefixRule,
    PrefixTable,
    PrefixTableError,
)

REPOSITORY = Path(__file__).resolve().parent.parent
SHIPPED_TABLE = REPOSITORY / "callguard" / "data" / "prefixes-gb.csv"
EDITABLE_COPY = REPOSITORY / "etc" / "prefixes-gb.csv"

GOOD_CSV = """\
# Test table
prefix,category,description

09,premium,Premium rate
  # indented comment
0871,premium,"Business rate, high service charge"
087,special-087,Business rate
+,international,International
+870,satellite,Inmarsat
"""


def write(tmp_path, text, name="prefixes.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_from_csv_reads_rules(tmp_path):
    table = PrefixTable.from_csv(write(tmp_path, GOOD_CSV))

    assert len(table) == 5
    assert table.rules() == [
        PrefixRule("09", "premium", "Premium rate"),
        PrefixRule("0871", "premium", "Business rate, high service charge"),
        PrefixRule("087", "special-087", "Business rate"),
        PrefixRule("+", "international", "International"),
        PrefixRule("+870", "satellite", "Inmarsat"),
    ]
    assert table.line_number("0871") == 6


def test_from_csv_accepts_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfprefix,category,description\n09,premium,Premium\n")

    assert PrefixTable.from_csv(path).rules() == [
        PrefixRule("09", "premium", "Premium")
    ]


def test_from_csv_accepts_header_case(tmp_path):
    path = write(tmp_path, "Prefix, Category, Description\n 09 , premium , Premium \n")

    assert PrefixTable.from_csv(path).rules() == [
        PrefixRule("09", "premium", "Premium")
    ]


# key, prefix of the longest matching rule or None
MATCH_CASES = [
    ("09011234567", "09"),
    ("08712345678", "0871"),
    ("08701234567", "087"),
    ("0871", "0871"),
    ("087", "087"),
    ("08", None),
    ("01632960000", None),
    ("", None),
    ("+870773111111", "+870"),
    ("+87", "+"),
    ("+353851234567", "+"),
    ("+", "+"),
]


@pytest.mark.parametrize("key, prefix", MATCH_CASES)
def test_match_longest(tmp_path, key, prefix):
    table = PrefixTable.from_csv(write(tmp_path, GOOD_CSV))
    rule = table.match(key)

    assert (rule.prefix if rule else None) == prefix


# CSV body after the header, message start after the path, fragments that follow
CSV_ERRORS = [
    (
        "09,premum,Premium\n",
        ":2: category 'premum' is unknown; use one of ",
        ["crown-dependency", "premium", "special-084"],
    ),
    (
        "09,,Premium\n",
        ":2: category '' is unknown",
        [],
    ),
    (
        "09,premium,A\n# comment\n\n09,premium,B\n",
        ":5: prefix '09' is already defined on line 2",
        [],
    ),
    ("0 9,premium,Premium\n", ":2: prefix '0 9' is invalid", ["'+870'"]),
    ("09a,premium,Premium\n", ":2: prefix '09a' is invalid", []),
    (",premium,Premium\n", ":2: prefix '' is invalid", []),
    ("+0044,international,\n", ":2: prefix '+0044' is invalid", []),
    ("++44,international,\n", ":2: prefix '++44' is invalid", []),
    ("０９,premium,Premium\n", ":2: prefix '０９' is invalid", []),
    ("1" * 19 + ",premium,Long\n", ":2: prefix '" + "1" * 19, []),
    ("09,premium\n", ":2: expected 3 columns", ["found 2"]),
    ("09,premium,Premium,extra\n", ":2: expected 3 columns", ["found 4"]),
    ('09,premium,"Premium\n', ":2: malformed CSV", []),
]


@pytest.mark.parametrize("body, start, fragments", CSV_ERRORS)
def test_csv_errors(tmp_path, body, start, fragments):
    path = write(tmp_path, "prefix,category,description\n" + body)

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    message = str(caught.value)
    assert message.startswith(str(path) + start)
    for fragment in fragments:
        assert fragment in message


def test_csv_lists_every_bad_row(tmp_path):
    path = write(
        tmp_path,
        "prefix,category,description\n"
        "09,premum,Premium\n"
        "0871,premium,Business rate\n"
        '087,special-087,"Business rate\n'
        "0 9,premium,Spaced\n"
        "0871,premium,Again\n",
    )

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    lines = str(caught.value).splitlines()
    assert caught.value.error_count == 4
    assert len(lines) == 4
    assert lines[0].startswith(f"{path}:2: category 'premum' is unknown; use one of ")
    assert lines[1].startswith(
        f"{path}:4: malformed CSV in '087,special-087,\"Business rate' ("
    )
    assert lines[1].endswith(
        "; fix the quoting, like '0871,premium,\"Business rate, high service charge\"'"
    )
    assert lines[2].startswith(f"{path}:5: prefix '0 9' is invalid; write national")
    assert lines[3] == (
        f"{path}:6: prefix '0871' is already defined on line 3; remove one of the "
        "two rows"
    )


def test_csv_errors_bounded(tmp_path):
    rows = "".join(f"0{n},nope,\n" for n in range(25))
    path = write(tmp_path, "prefix,category,description\n" + rows)

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    lines = str(caught.value).splitlines()
    assert caught.value.error_count == 25
    assert len(caught.value.errors) == 20
    assert lines[0].startswith(f"{path}:2: category 'nope' is unknown")
    assert lines[19].startswith(f"{path}:21: category 'nope' is unknown")
    assert lines[20] == "... and 5 more errors"


def test_csv_one_error_omitted(tmp_path):
    rows = "".join(f"0{n},nope,\n" for n in range(21))
    path = write(tmp_path, "prefix,category,description\n" + rows)

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    assert str(caught.value).splitlines()[-1] == "... and 1 more error"


# whole file, expected start of the message after the path
HEADER_ERRORS = [
    ("09,premium,Premium\n", ":1: header row is missing"),
    ("# only a comment\n\n09,premium,Premium\n", ":3: header row is missing"),
    ("prefix,category\n09,premium\n", ":1: header row is missing"),
    ("", ": header row 'prefix,category,description' is missing"),
    ("# comments only\n", ": header row 'prefix,category,description' is missing"),
]


@pytest.mark.parametrize("text, start", HEADER_ERRORS)
def test_header_errors(tmp_path, text, start):
    path = write(tmp_path, text)

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    assert str(caught.value).startswith(str(path) + start)


@pytest.mark.parametrize("text", [
    "prefix,category,description\n",
    "prefix,category,description\n# rows to come\n\n",
])
def test_header_only_table_rejected(tmp_path, text):
    # A table without rows would leave every dialled number but an emergency
    # number unclassified.
    path = write(tmp_path, text)

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    assert str(caught.value) == (
        f"{path}: contains no prefixes, so every call but an emergency call would "
        "be denied; add rows under the header"
    )


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    assert str(caught.value).startswith(f"{path}: cannot read the prefix table")


@pytest.mark.parametrize("start", [b"", codecs.BOM_UTF8])
def test_undecodable_file(tmp_path, start):
    path = tmp_path / "latin1.csv"
    path.write_bytes(start + b"prefix,category,description\n09,premium,Premium \xa3\n")

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_csv(path)

    assert str(caught.value) == (
        f"{path}:2: byte 0xa3 at column 20 is not valid UTF-8; save the file as UTF-8"
    )


# rows, expected start of the message
ROW_ERRORS = [
    (
        [("09", "premium", "A"), ("09", "premium", "B")],
        "<rows>:2: prefix '09' is already",
    ),
    ([("09", "premium")], "<rows>:1: expected 3 fields"),
    ([("09", "nope", "")], "<rows>:1: category 'nope' is unknown"),
    ([(9, "premium", "")], "<rows>:1: every field must be a string"),
]


@pytest.mark.parametrize("rows, start", ROW_ERRORS)
def test_row_errors(rows, start):
    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_rows(rows)

    assert str(caught.value).startswith(start)


def test_rows_list_every_bad_row():
    rows = [("09", "premium", "A"), ("09", "premium", "B"), ("07", "mobil", "")]

    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_rows(rows)

    assert str(caught.value).splitlines() == [
        "<rows>:2: prefix '09' is already defined on line 1; remove one of the two rows",
        f"<rows>:3: category 'mobil' is unknown; use one of {', '.join(sorted(CATEGORIES))}",
    ]


def test_from_rows_source():
    with pytest.raises(PrefixTableError) as caught:
        PrefixTable.from_rows([("x", "premium", "")], source="config")

    assert str(caught.value).startswith("config:1: prefix 'x' is invalid")


def test_empty_table_matches_nothing():
    table = PrefixTable.from_rows([])

    assert len(table) == 0
    assert table.match("09011234567") is None


def test_match_large_table():
    rules = [(f"0{n:07d}", "geographic", "") for n in range(20_000)]
    rules.append(("+", "international", ""))
    table = PrefixTable.from_rows(rules)

    assert table.match("000012345678").prefix == "00001234"
    assert table.match("+353851234567").prefix == "+"
    assert table.match("1") is None


def test_international_family():
    assert INTERNATIONAL_CATEGORIES == {
        "international",
        "satellite",
        "international-premium",
    }
    assert INTERNATIONAL_CATEGORIES <= CATEGORIES
    assert "crown-dependency" not in INTERNATIONAL_CATEGORIES


def test_shipped_table_loads():
    table = PrefixTable.default()

    assert table.source == "prefixes-gb.csv"
    assert len(table) == len(PrefixTable.from_csv(SHIPPED_TABLE))
    assert Classifier(NumberPlan("GB"), table).table is table


def test_editable_copy_identical():
    assert EDITABLE_COPY.read_bytes() == SHIPPED_TABLE.read_bytes()


def test_shipped_descriptions_present():
    for rule in PrefixTable.default().rules():
        assert rule.description, f"prefix {rule.prefix!r} has no description"


# prefix, category
SHIPPED_RULES = [
    ("999", "emergency"),
    ("112", "emergency"),
    ("18000", "emergency"),
    ("101", "service"),
    ("105", "service"),
    ("111", "service"),
    ("116", "service"),
    ("116000", "service"),
    ("116111", "service"),
    ("116117", "service"),
    ("116123", "service"),
    ("118", "directory"),
    ("09", "premium"),
    ("0871", "premium"),
    ("0872", "premium"),
    ("0873", "premium"),
    ("084", "special-084"),
    ("087", "special-087"),
    ("0870", "special-087"),
    ("070", "personal"),
    ("076", "pager"),
    ("071", "mobile"),
    ("072", "mobile"),
    ("073", "mobile"),
    ("074", "mobile"),
    ("075", "mobile"),
    ("077", "mobile"),
    ("078", "mobile"),
    ("079", "mobile"),
    ("07700900", "mobile"),
    ("07524", "crown-dependency"),
    ("07624", "crown-dependency"),
    ("07924", "crown-dependency"),
    ("07509", "crown-dependency"),
    ("07797", "crown-dependency"),
    ("07829", "crown-dependency"),
    ("07937", "crown-dependency"),
    ("07781", "crown-dependency"),
    ("07839", "crown-dependency"),
    ("079111", "crown-dependency"),
    ("01", "geographic"),
    ("02", "geographic"),
    ("03", "non-geographic"),
    ("0800", "freephone"),
    ("0808", "freephone"),
    ("+", "international"),
    ("+870", "satellite"),
    ("+881", "satellite"),
    ("+882", "satellite"),
    ("+883", "satellite"),
    ("+878", "satellite"),
    ("+888", "satellite"),
    ("+979", "international-premium"),
]


@pytest.fixture(scope="module")
def shipped_table():
    return PrefixTable.default()


@pytest.mark.parametrize("prefix, category", SHIPPED_RULES)
def test_shipped_rule(shipped_table, prefix, category):
    rule = shipped_table.match(prefix)

    assert rule is not None
    assert rule.prefix == prefix
    assert rule.category == category
