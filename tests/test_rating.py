"""Rating: increments, block prices, call costs, budgets and rate deck loading."""

import random
from decimal import Decimal as D
from pathlib import Path

import pytest

from callguard.money import MICRO
from callguard.rating import Increments, RateDeck, RateDeckError, Tariff
from callguard.rating.errors import MAX_REPORTED_ERRORS

SAMPLE_DECK = Path(__file__).resolve().parent.parent / "etc" / "rates-gamma.csv"
HEADER = "prefix,description,rate,connection_fee,increments"


def tariff(rate: str, increments: str, fee: str = "0") -> Tariff:
    return Tariff("44", "test", D(rate), D(fee), Increments.parse(increments))


# (rate per minute, increments, connection fee, seconds, expected cost)
COSTS = [
    # rate 0.006/min, 30/6, no fee
    ("0.006", "30/6", "0", 0, "0"),
    ("0.006", "30/6", "0", 1, "0.0030"),
    ("0.006", "30/6", "0", 30, "0.0030"),
    ("0.006", "30/6", "0", 31, "0.0036"),
    ("0.006", "30/6", "0", 57, "0.0060"),
    ("0.006", "30/6", "0", 60, "0.0060"),
    ("0.006", "30/6", "0", 75, "0.0078"),
    ("0.006", "30/6", "0", D("0.2"), "0.0030"),
    ("0.006", "30/6", "0", D("30.2"), "0.0036"),
    ("0.0060", "30/6", "0", 75, "0.0078"),
    # 60/60
    ("1.00", "60/60", "0", 1, "1.00"),
    ("1.00", "60/60", "0", 60, "1.00"),
    ("1.00", "60/60", "0", D("60.001"), "2.00"),
    ("1.00", "60/60", "0", 120, "2.00"),
    ("1.00", "60/60", "0", 121, "3.00"),
    ("1.00", "60/60", "0.10", 0, "0"),
    ("1.00", "60/60", "0.10", 1, "1.10"),
    ("1.00", "60/60", "0.10", 61, "2.10"),
    # 1/1
    ("0.12", "1/1", "0", D("0.5"), "0.002"),
    ("0.12", "1/1", "0", 1, "0.002"),
    ("0.12", "1/1", "0", 59, "0.118"),
    ("0.12", "1/1", "0", 60, "0.120"),
    ("0.12", "1/1", "0", D("60.2"), "0.122"),
    ("0.12", "1/1", "0.05", 1, "0.052"),
    ("0.12", "1/1", "0.05", 60, "0.170"),
    # 30/6 at another rate
    ("0.09", "30/6", "0", 30, "0.045"),
    ("0.09", "30/6", "0", 31, "0.054"),
    ("0.09", "30/6", "0", 36, "0.054"),
    ("0.09", "30/6", "0", 37, "0.063"),
    ("0.09", "30/6", "0.01", 1, "0.055"),
    ("0.09", "30/6", "0.01", 31, "0.064"),
    ("0.0125", "6/6", "0", 7, "0.0025"),
    # awkward prices, each block rounded up to the micro-unit
    ("0.0333333", "1/1", "0", 1, "0.000556"),
    ("0.0333333", "1/1", "0", 60, "0.03336"),
    ("0.0333333", "60/60", "0", 60, "0.033334"),
    ("0.0333333", "60/60", "0", 61, "0.066668"),
    ("0.01", "1/1", "0", 3, "0.000501"),
    ("0.0071", "1/1", "0", 1, "0.000119"),
    ("0.000001", "1/1", "0", 10, "0.00001"),
    # zero rate: only the fee
    ("0", "60/60", "0.25", 1, "0.25"),
    ("0", "60/60", "0.25", 3600, "0.25"),
    ("0", "60/60", "0", 3600, "0"),
]


@pytest.mark.parametrize("rate, increments, fee, seconds, expected", COSTS)
def test_cost_table(rate, increments, fee, seconds, expected):
    cost = tariff(rate, increments, fee).cost(seconds)

    assert type(cost) is D
    assert cost == D(expected)
    assert cost == cost.quantize(MICRO)


@pytest.mark.parametrize(
    "rate, increments, index, expected_start, expected_cost",
    [
        ("0.006", "30/6", 0, 0, "0.003"),
        ("0.006", "30/6", 1, 30, "0.0006"),
        ("0.006", "30/6", 2, 36, "0.0006"),
        ("0.006", "30/6", 5, 54, "0.0006"),
        ("1.00", "60/60", 3, 180, "1.00"),
        ("0.12", "1/1", 10, 10, "0.002"),
        ("0.0333333", "1/1", 0, 0, "0.000556"),
        ("0.0333333", "60/1", 1, 60, "0.000556"),
        ("0.0333333", "60/1", 0, 0, "0.033334"),
    ],
)
def test_block_start_and_cost(rate, increments, index, expected_start, expected_cost):
    priced = tariff(rate, increments, fee="0.5")

    assert priced.block_start(index) == expected_start
    assert priced.block_cost(index) == D(expected_cost)


@pytest.mark.parametrize(
    "increments, elapsed, expected",
    [
        ("30/6", 0, 1),
        ("30/6", D("29.9"), 1),
        ("30/6", 30, 2),
        ("30/6", D("35.9"), 2),
        ("30/6", 36, 3),
        ("60/60", 59, 1),
        ("60/60", 60, 2),
        ("60/60", 120, 3),
        ("1/1", 0, 1),
        ("1/1", D("0.5"), 1),
        ("1/1", 1, 2),
        ("1/1", 5, 6),
    ],
)
def test_blocks_begun_table(increments, elapsed, expected):
    assert tariff("0.006", increments).blocks_begun(elapsed) == expected


@pytest.mark.parametrize(
    "rate, increments, fee, count, expected",
    [
        ("0.006", "30/6", "0", 0, "0"),
        ("0.006", "30/6", "0", 1, "0.003"),
        ("0.006", "30/6", "0", 2, "0.0036"),
        ("0.006", "30/6", "0", 6, "0.006"),
        ("1.00", "60/60", "0.10", 0, "0"),
        ("1.00", "60/60", "0.10", 1, "1.10"),
        ("1.00", "60/60", "0.10", 3, "3.10"),
        ("0", "60/60", "0.25", 100, "0.25"),
    ],
)
def test_cost_of_blocks_table(rate, increments, fee, count, expected):
    assert tariff(rate, increments, fee).cost_of_blocks(count) == D(expected)


@pytest.mark.parametrize(
    "rate, increments, fee, expected",
    [
        ("0.006", "30/6", "0", "0.003"),
        ("1.00", "60/60", "0.10", "1.10"),
        ("0.09", "30/6", "0.01", "0.055"),
        ("0", "60/60", "0.25", "0.25"),
        ("0", "60/60", "0", "0"),
    ],
)
def test_first_block_cost_table(rate, increments, fee, expected):
    assert tariff(rate, increments, fee).first_block_cost() == D(expected)


def test_block_prices_kept_out_of_equality():
    # A tariff keeps its block prices once read, and stays equal to one that
    # has not read them, with the same hash and repr.
    used = tariff("0.09", "30/6", "0.01")
    fresh = tariff("0.09", "30/6", "0.01")

    assert used.first_block_cost() == D("0.055")
    assert used.later_block_cost() == D("0.009")
    assert used.first_block_cost() == D("0.055")
    assert used == fresh
    assert hash(used) == hash(fresh)
    assert repr(used) == repr(fresh)
    assert fresh.cost(75) == used.cost(75) == D("0.127")


def test_deck_tariffs_share_block_prices_exactly():
    deck = RateDeck.from_rows([("44", "UK", D("0.0333333"), D("0.015"), Increments(60, 1))],
                              "rates.csv")
    first, second = deck.lookup("441632960000"), deck.lookup("447700900123")

    assert first is not second
    assert first.first_block_cost() == D("0.048334")
    assert second.later_block_cost() == D("0.000556")
    assert first.first_block_cost().as_tuple().exponent == -6


@pytest.mark.parametrize(
    "rate, increments, fee, expected",
    [
        ("0.006", "30/6", "0", "0.0006"),
        ("1.00", "60/60", "0.10", "1.00"),
        ("0.09", "30/6", "0.01", "0.009"),
        ("0.0001", "1/1", "0", "0.000002"),
        ("0", "60/60", "0.25", "0"),
    ],
)
def test_later_block_cost_table(rate, increments, fee, expected):
    rated = tariff(rate, increments, fee)
    assert rated.later_block_cost() == D(expected) == rated.block_cost(1)


# (rate, increments, fee, budget, expected seconds or None for unlimited)
BUDGETS = [
    ("1.00", "60/60", "0", D("3.00"), 180),
    ("1.00", "60/60", "0", D("2.99"), 120),
    ("1.00", "60/60", "0", D("0.99"), 0),
    ("1.00", "60/60", "0", D("1.00"), 60),
    ("1.00", "60/60", "0", D("0"), 0),
    ("1.00", "60/60", "0", D("-1.00"), 0),
    ("1.00", "60/60", "0", 3, 180),
    ("1.00", "60/60", "0.10", D("1.09"), 0),
    ("1.00", "60/60", "0.10", D("1.10"), 60),
    ("1.00", "60/60", "0.10", D("2.09"), 60),
    ("1.00", "60/60", "0.10", D("2.10"), 120),
    ("0.006", "30/6", "0", D("0.0029"), 0),
    ("0.006", "30/6", "0", D("0.003"), 30),
    ("0.006", "30/6", "0", D("0.0035999"), 30),
    ("0.006", "30/6", "0", D("0.0036"), 36),
    ("0.006", "30/6", "0", D("0.006"), 60),
    ("0.12", "1/1", "0", D("0.121"), 60),
    ("0.12", "1/1", "0", D("0.122"), 61),
    ("0", "60/60", "0.25", D("0.25"), None),
    ("0", "60/60", "0.25", D("0.24"), 0),
    ("0", "60/60", "0", D("0"), None),
    ("0", "60/60", "0", D("-0.01"), 0),
]


@pytest.mark.parametrize("rate, increments, fee, budget, expected", BUDGETS)
def test_seconds_for_budget_table(rate, increments, fee, budget, expected):
    assert tariff(rate, increments, fee).seconds_for_budget(budget) == expected


@pytest.mark.parametrize(
    "rate, increments, fee, budget, already, expected",
    [
        ("1.00", "60/60", "0.10", D("1.10"), 0, 1),
        ("1.00", "60/60", "0.10", D("1.10"), 1, 1),
        ("1.00", "60/60", "0.10", D("2.99"), 3, 2),
        ("1.00", "60/60", "0.10", D("0.99"), 1, 0),
        ("1.00", "60/60", "0.10", D("-5"), 1, 0),
        ("0.006", "30/6", "0", D("0.0030"), 1, 5),
        ("0.006", "30/6", "0", D("0.0030"), 0, 1),
        ("0", "60/60", "0.25", D("0"), 2, None),
        ("0", "60/60", "0.25", D("-0.01"), 2, 0),
        ("0", "60/60", "0.25", D("0.10"), 0, 0),
    ],
)
def test_blocks_for_budget_table(rate, increments, fee, budget, already, expected):
    priced = tariff(rate, increments, fee)

    assert priced.blocks_for_budget(budget, already) == expected


BOUNDARY_TARIFFS = [
    ("1.00", "60/60", "0"),
    ("1.00", "60/60", "0.10"),
    ("0.006", "30/6", "0"),
    ("0.09", "30/6", "0.01"),
    ("0.12", "1/1", "0.05"),
    ("0.0333333", "1/1", "0"),
    ("0.000001", "60/1", "0.000001"),
]


@pytest.mark.parametrize("rate, increments, fee", BOUNDARY_TARIFFS)
def test_budget_at_block_boundaries(rate, increments, fee):
    priced = tariff(rate, increments, fee)

    for count in range(1, 8):
        exact = priced.cost_of_blocks(count)
        assert priced.seconds_for_budget(exact) == priced.block_start(count)
        assert priced.seconds_for_budget(exact - MICRO) == priced.block_start(count - 1)


@pytest.mark.parametrize("seed", range(5))
def test_budget_inverse_properties(seed):
    generator = random.Random(seed)
    shapes = ["60/60", "1/1", "30/6", "6/6", "60/1", "45/15"]

    for _ in range(200):
        rate = D(generator.randrange(0, 5_000_000)) / 1_000_000
        fee = D(generator.choice([0, 0, 10_000, 250_000])) / 1_000_000
        priced = tariff(str(rate), generator.choice(shapes), str(fee))
        budget = D(generator.randrange(-1000, 20_000_000)) / 1_000_000

        seconds = priced.seconds_for_budget(budget)
        count = priced.blocks_for_budget(budget)
        if rate == 0:
            assert (seconds is None) == (budget >= fee)
            continue

        assert priced.cost(seconds) <= max(budget, D(0))
        assert priced.cost_of_blocks(count + 1) > budget
        assert priced.blocks_billed(seconds) == count


@pytest.mark.parametrize("seed", range(3))
def test_blocks_for_budget_resumes(seed):
    generator = random.Random(seed)
    priced = tariff("0.0333333", "30/6", "0.05")

    for _ in range(200):
        budget = D(generator.randrange(0, 2_000_000)) / 1_000_000
        total = priced.blocks_for_budget(budget)
        already = generator.randrange(1, total + 2)
        remaining = budget - priced.cost_of_blocks(already)

        more = priced.blocks_for_budget(remaining, already)
        if already <= total:
            assert already + more == total
        else:
            assert more == 0


@pytest.mark.parametrize(
    "text, first, later",
    [("60/60", 60, 60), ("1/1", 1, 1), ("30/6", 30, 6), (" 60/1 ", 60, 1)],
)
def test_increments_parse_valid(text, first, later):
    increments = Increments.parse(text)

    assert increments == Increments(first, later)
    assert str(increments) == f"{first}/{later}"


@pytest.mark.parametrize(
    "text",
    ["60-60", "60", "", "0/60", "60/0", "a/b", "60/60/60", "-1/1", "１/１", "1.5/1"],
)
def test_increments_parse_invalid(text):
    with pytest.raises(
        ValueError, match=r"increments .* is invalid.*; write it like 60/60"
    ):
        Increments.parse(text)


@pytest.mark.parametrize("first, later", [(0, 60), (60, -1), (True, 1), (1.0, 1)])
def test_increments_reject_bad_values(first, later):
    with pytest.raises(ValueError, match="whole number of seconds"):
        Increments(first, later)


@pytest.mark.parametrize(
    "method, value, error",
    [
        ("cost", 1.5, TypeError),
        ("cost", -1, ValueError),
        ("cost", D("-0.5"), ValueError),
        ("cost", D("NaN"), TypeError),
        ("blocks_begun", 0.5, TypeError),
        ("blocks_begun", D("-1"), ValueError),
        ("seconds_for_budget", 1.0, TypeError),
        ("seconds_for_budget", D("Infinity"), TypeError),
        ("cost_of_blocks", -1, ValueError),
        ("cost_of_blocks", 1.0, TypeError),
        ("block_start", -1, ValueError),
        ("block_cost", True, TypeError),
    ],
)
def test_tariff_rejects_bad_arguments(method, value, error):
    with pytest.raises(error):
        getattr(tariff("1.00", "60/60"), method)(value)


@pytest.mark.parametrize(
    "fields, error, message",
    [
        (("+44", "x", D("1"), D("0")), ValueError, "drop the leading +"),
        (("44", "x", 0.01, D("0")), TypeError, "pass a Decimal"),
        (("44", "x", D("-1"), D("0")), ValueError, "not negative"),
        (("44", "x", D("1"), D("0.0000001")), ValueError, "six decimal places"),
        (("44", "x", D("1"), 0), TypeError, "pass a Decimal"),
        (("44", None, D("1"), D("0")), TypeError, "pass a string"),
    ],
)
def test_tariff_rejects_bad_fields(fields, error, message):
    with pytest.raises(error, match=message):
        Tariff(*fields, Increments(60, 60))


def test_tariff_default():
    fallback = Tariff.default(D("0.20"))

    assert fallback.prefix == ""
    assert fallback.description == "default rate"
    assert fallback.connection_fee == 0
    assert fallback.increments == Increments(60, 60)
    assert fallback.cost(61) == D("0.40")


def deck_of(*prefixes: str) -> RateDeck:
    rows = [(p, f"dest {p}", D("0.01"), D("0"), Increments(60, 60)) for p in prefixes]
    return RateDeck.from_rows(rows)


@pytest.mark.parametrize(
    "digits, expected",
    [
        ("447712345678", "4477"),
        ("4477", "4477"),
        ("447612345678", "447"),
        ("447", "447"),
        ("441234567890", "44"),
        ("44", "44"),
        ("4", None),
        ("33123456789", None),
        ("1", "1"),
        ("12025550123", "1"),
        ("8816312345", "8816"),
    ],
)
def test_lookup_longest_prefix(digits, expected):
    deck = deck_of("44", "447", "4477", "1", "8816")
    found = deck.lookup(digits)

    assert (found.prefix if found else None) == expected


def test_lookup_returns_row_fields():
    deck = RateDeck.from_rows(
        [
            ("44", "United Kingdom", D("0.0085"), D("0"), Increments(1, 1)),
            ("447", "United Kingdom mobile", D("0.025"), D("0.01"), Increments(30, 6)),
        ]
    )
    found = deck.lookup("447700900123")

    assert found == Tariff(
        "447", "United Kingdom mobile", D("0.025"), D("0.01"), Increments(30, 6)
    )


@pytest.mark.parametrize("digits", ["+447700900123", "", "44 77", "４４", None, 44])
def test_lookup_rejects_bad_digits(digits):
    with pytest.raises(ValueError, match="E.164 digits without"):
        deck_of("44").lookup(digits)


# The E.164 rows 44116 (Leicester) and 44118 (Reading) share digits with the short
# codes 116123 and 118118, which only short: rows and the 44 row may price.
SHORT_CODE_DECK = ("44", "44116", "44118", "short:118", "short:11850")


@pytest.mark.parametrize(
    "key, expected",
    [
        ("441184960123", "44118"),
        ("441164960123", "44116"),
        ("442079460000", "44"),
        ("short:118118", "short:118"),
        ("short:118", "short:118"),
        ("short:118500", "short:11850"),
        ("short:116123", "44"),
        ("short:11", "44"),
        ("short:100", "44"),
    ],
)
def test_lookup_short_codes_apart(key, expected):
    deck = deck_of(*SHORT_CODE_DECK)
    found = deck.lookup(key, 44)

    assert (found.prefix if found else None) == expected


def test_e164_number_never_matches_short_rows():
    deck = deck_of("short:44", "short:1")

    assert deck.lookup("441184960123") is None
    assert deck.lookup("12025550123", 1) is None


@pytest.mark.parametrize(
    "prefixes, home_country_code, expected",
    [
        (("44", "4411", "short:999"), 44, "44"),
        (("4", "441"), 44, "4"),
        (("35", "3538"), 353, "35"),
        (("1", "1411"), 1, "1"),
        (("441", "33"), 44, None),
        (("44",), None, None),
    ],
)
def test_short_code_falls_back_to_country_row(prefixes, home_country_code, expected):
    deck = deck_of(*prefixes)
    found = deck.lookup("short:411", home_country_code)

    assert (found.prefix if found else None) == expected


@pytest.mark.parametrize("key", ["short:", "short:1a", "short:+1", "short: 118"])
def test_lookup_rejects_bad_short_codes(key):
    with pytest.raises(ValueError, match="short code .* is invalid"):
        deck_of("44", "short:118").lookup(key, 44)


@pytest.mark.parametrize("home_country_code", [0, "44", 44.0])
def test_lookup_rejects_bad_home_country_code(home_country_code):
    with pytest.raises(ValueError, match="home_country_code"):
        deck_of("44").lookup("short:118118", home_country_code)


def test_deck_len_and_order():
    deck = deck_of("49", "44", "447")

    assert len(deck) == 3
    assert [t.prefix for t in deck.tariffs()] == ["49", "44", "447"]
    assert deck.source == "<rows>"


@pytest.mark.parametrize(
    "row, message",
    [
        (("+44", "x", D("0.01"), D("0"), Increments(60, 60)), "<rows>:2: prefix"),
        (("33", "x", 0.01, D("0"), Increments(60, 60)), "<rows>:2: rate 0.01"),
        (("33", "x", D("0.01"), D("0"), "60/60"), "<rows>:2: increments '60/60'"),
        (("33", "x", D("0.01")), "<rows>:2: row"),
        (
            ("short:1a", "x", D("0.01"), D("0"), Increments(60, 60)),
            "<rows>:2: prefix 'short:1a' is invalid",
        ),
        (
            ("44", "x", D("0.01"), D("0"), Increments(60, 60)),
            "<rows>:2: prefix '44' is",
        ),
    ],
)
def test_from_rows_errors(row, message):
    good = ("44", "x", D("0.01"), D("0"), Increments(60, 60))

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_rows([good, row])
    assert str(caught.value).startswith(message)


def test_from_rows_float_after_decimal():
    rows = [
        ("44", "x", D("0.5"), D("0"), Increments(60, 60)),
        ("33", "x", 0.5, D("0"), Increments(60, 60)),
    ]

    with pytest.raises(RateDeckError, match="<rows>:2: rate 0.5 is a float"):
        RateDeck.from_rows(rows)


def test_from_rows_empty():
    with pytest.raises(RateDeckError, match="contains no rates"):
        RateDeck.from_rows([])


def write_deck(directory: Path, *lines: str, name: str = "rates.csv") -> Path:
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sample_deck_loads():
    deck = RateDeck.from_csv(SAMPLE_DECK)

    assert len(deck) == 41
    assert deck.lookup("447700900123").description == "United Kingdom mobile"
    assert deck.lookup("short:118118", 44).description == "United Kingdom directory enquiries"
    assert deck.lookup("441184960123").description == "United Kingdom"
    assert deck.lookup("12025550123").increments == Increments(6, 6)
    assert deck.lookup("18005550123").rate == 0
    assert deck.lookup("82212345678").description == "Korea, Republic of"
    assert deck.lookup("8816312345").rate == D("6.0000")
    assert deck.lookup("19005550123").connection_fee == D("0.25")
    assert deck.lookup("7495123456") is None


def test_csv_error_names_file_and_line(tmp_path, monkeypatch):
    write_deck(
        tmp_path,
        "# sample",
        HEADER,
        "",
        "44,United Kingdom,0.0085,,1/1",
        "# mobiles",
        "447,United Kingdom mobile,0.025,,1/1",
        "49,Germany,0.0095,,60-60",
        name="rates-gamma.csv",
    )
    monkeypatch.chdir(tmp_path)

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv("rates-gamma.csv")
    assert str(caught.value) == (
        "rates-gamma.csv:7: increments '60-60' is invalid; write it like 60/60"
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ("+44,UK,0.01,,60/60", "prefix '+44' is invalid; drop the leading +"),
        ("0044,UK,0.01,,60/60", "prefix '0044' is invalid because E.164"),
        ("44a,UK,0.01,,60/60", "prefix '44a' is invalid; write only the digits"),
        (",UK,0.01,,60/60", "prefix '' is missing"),
        (
            "1234567890123456,UK,0.01,,60/60",
            "prefix '1234567890123456' is invalid because E.164 numbers have at most",
        ),
        ("short:,UK,0.01,,60/60", "prefix 'short:' is missing the short code"),
        (
            "short:+1,UK,0.01,,60/60",
            "prefix 'short:+1' is invalid; write only the digits 0-9 of a short code",
        ),
        (
            "short:1a,UK,0.01,,60/60",
            "prefix 'short:1a' is invalid; write only the digits 0-9 of a short code",
        ),
        (
            "SHORT:118,UK,0.01,,60/60",
            "prefix 'SHORT:118' is invalid; write short: in lower case, like short:118",
        ),
        (
            "short:1234567890123456,UK,0.01,,60/60",
            "prefix 'short:1234567890123456' is invalid because a short code prefix "
            "has at most 15 digits",
        ),
        ("44,UK,abc,,60/60", "rate 'abc' is invalid; write the price per minute"),
        ("44,UK,1e3,,60/60", "rate '1e3' is invalid"),
        ("44,UK,-0.01,,60/60", "rate '-0.01' is invalid because a rate cannot"),
        ("44,UK,,,60/60", "rate '' is missing"),
        ("44,UK,0.01,0.1234567,60/60", "connection_fee '0.1234567' is invalid"),
        ("44,UK,0.01,-1,60/60", "connection_fee '-1' is invalid"),
        (
            "44,UK,1000000000000,,60/60",
            "rate '1000000000000' is too large; the maximum is 999999999999.999999",
        ),
        (
            "44,UK,0.01,1000000000000,60/60",
            "connection_fee '1000000000000' is too large; the maximum is "
            "999999999999.999999",
        ),
        ("44,UK,0.01,,60/0", "increments '60/0' is invalid because a block"),
        ("44,UK,0.01,,", "increments '' is invalid"),
        ("44,Korea, Republic of,0.01,,60/60", "the row has 6 fields but the header"),
    ],
)
def test_csv_field_errors(tmp_path, row, message):
    path = write_deck(tmp_path, HEADER, row)

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert str(caught.value).startswith(f"{path}:2: {message}")


def test_csv_duplicate_prefix(tmp_path):
    path = write_deck(
        tmp_path,
        HEADER,
        "44,UK,0.01,,60/60",
        "447,UK mobile,0.02,,1/1",
        "44,UK,0.01,,1/1",
    )

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert str(caught.value) == (
        f"{path}:4: prefix '44' is a duplicate of an earlier row; "
        "keep one row per prefix"
    )


def test_csv_short_code_rows(tmp_path):
    path = write_deck(
        tmp_path,
        HEADER,
        "44,UK,0.0085,,1/1",
        "44118,Reading,0.0090,,1/1",
        "short:118,Directory,4.50,4.50,60/60",
    )
    deck = RateDeck.from_csv(path)
    reading = deck.lookup("441184960123", 44)
    directory = deck.lookup("short:118118", 44)

    assert len(deck) == 3
    assert reading.prefix == "44118"
    assert reading.rate == D("0.0090")
    assert directory == Tariff(
        "short:118", "Directory", D("4.50"), D("4.50"), Increments(60, 60)
    )


def test_csv_duplicate_short_code_prefix(tmp_path):
    path = write_deck(
        tmp_path,
        HEADER,
        "short:118,Directory,4.50,4.50,60/60",
        "44118,Reading,0.0090,,1/1",
        "short:118,Directory,4.50,,60/60",
    )

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert str(caught.value) == (
        f"{path}:4: prefix 'short:118' is a duplicate of an earlier row; "
        "keep one row per prefix"
    )


@pytest.mark.parametrize(
    "lines, message",
    [
        ((), "the header is missing"),
        (("# only a comment", ""), "the header is missing"),
        (("44,UK,0.01,,60/60",), "1: the header is missing, found '44,UK,0.01,,60/60'"),
        (
            ("prefix,description,price,connection_fee,increments",),
            "1: header column 'price' is unknown",
        ),
        (
            ("prefix,description,rate,increments",),
            "1: header column 'connection_fee' is missing",
        ),
        ((HEADER + ",rate",), "1: header column 'rate' appears twice"),
        ((HEADER, "# nothing yet"), "contains no rates"),
        (
            (HEADER, '44,"UK,0.01,,60/60', "33,France,0.01,,60/60"),
            "the CSV is malformed",
        ),
    ],
)
def test_csv_file_errors(tmp_path, lines, message):
    path = write_deck(tmp_path, *lines)

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert str(caught.value).startswith(f"{path}:")
    assert message in str(caught.value)


def test_csv_unclosed_quote_line(tmp_path):
    # The stray quote on line 3 opens a field that runs to the quote on line 6,
    # where the csv module notices the problem.
    path = write_deck(
        tmp_path,
        HEADER,
        "44,UK,0.01,,60/60",
        '4470,"UK personal,0.30,0.05,60/60',
        "# a comment",
        "33,France,0.01,,60/60",
        '82,"Korea, Republic of",0.02,,60/60',
        "49,Germany,0.01,,60/60",
    )

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert caught.value.error_count == 1
    assert caught.value.errors[0].startswith(f"{path}:3: the CSV is malformed")
    assert "row that runs from this line to line 6" in caught.value.errors[0]


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "rates.csv"
    path.write_bytes(
        f"{HEADER}\n44,UK,0.01,,60/60\n33,Fran\xe7e,0.01,,60/60\n".encode("latin-1")
    )

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert str(caught.value) == (
        f"{path}:3: byte 0xe7 at column 8 is not valid UTF-8; save the file as UTF-8"
    )


def test_csv_collects_errors(tmp_path):
    rows = [f"{prefix},bad,x,,60/60" for prefix in range(100, 130)]
    path = write_deck(tmp_path, HEADER, *rows)

    with pytest.raises(RateDeckError) as caught:
        RateDeck.from_csv(path)
    assert caught.value.error_count == 30
    assert len(caught.value.errors) == MAX_REPORTED_ERRORS
    assert caught.value.errors[0].startswith(f"{path}:2: rate 'x'")
    assert str(caught.value).endswith("... and 10 more errors")


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        RateDeck.from_csv(tmp_path / "absent.csv")


def test_csv_layout_variants(tmp_path):
    path = tmp_path / "rates.csv"
    text = (
        "\ufeffIncrements, Rate ,prefix,description,connection_fee\r\n"
        '  # comment with a stray " quote\r\n'
        '30/6,0.006,44,"Korea, Republic of",0.05\r\n'
        " 60/60 , 0.0060 , 33 , France ,\r\n"
    )
    path.write_bytes(text.encode("utf-8"))
    deck = RateDeck.from_csv(path)

    korea = deck.lookup("441")
    france = deck.lookup("331")
    assert korea == Tariff(
        "44", "Korea, Republic of", D("0.006"), D("0.05"), Increments(30, 6)
    )
    assert france == Tariff("33", "France", D("0.0060"), D("0"), Increments(60, 60))


def test_csv_rows_share_objects(tmp_path):
    path = write_deck(
        tmp_path,
        HEADER,
        "44,Europe,0.0100,0.05,60/60",
        "33,Europe,0.0100,0.05,60/60",
        "49,Germany,0.0100,,60/60",
    )
    deck = RateDeck.from_csv(path)
    uk, france, germany = deck.lookup("44"), deck.lookup("33"), deck.lookup("49")

    assert uk.rate is france.rate
    assert uk.rate is germany.rate
    assert uk.connection_fee is france.connection_fee
    assert uk.increments is germany.increments
    assert uk.description is france.description
