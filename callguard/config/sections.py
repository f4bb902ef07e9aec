"""Builders that turn each parsed section into its typed settings."""

import difflib
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from callguard.config.errors import ConfigProblem, InvalidValue
from callguard.config.fields import (
    ARI_FIELDS,
    GENERAL_FIELDS,
    NUMBER_FIELDS,
    TRUNK_FIELDS,
    Context,
    Field,
)
from callguard.config.hours import HOURS_EXAMPLE
from callguard.config.ini import Section
from callguard.config.offenders import build_offender_settings
from callguard.config.model import (
    AriConfig,
    GeneralConfig,
    NumberOverride,
    TrunkConfig,
)
from callguard.config.ranges import NumberRanges, parse_number_range

# The packaged prefix table classifies numbers of this region only.
PACKAGED_PREFIXES_REGION = "GB"
TRUNK_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
LIST_SEPARATOR = ","
# A '#' after whitespace, as other formats write a comment after a value.
TRAILING_HASH_COMMENT = re.compile(r"\s#")
# Added to the error of a value with such a '#'.
COMMENT_HINT = "; '#' does not start a comment in this file, so start the comment with ';'"


@dataclass
class SectionValues:
    """A section's parsed values, with defaults for the keys that the file omits.

    ``lines`` maps each key that the file sets to its line. ``failed`` contains the
    keys whose values were invalid. ``valid`` is False after any problem, including
    an unknown key.
    """

    values: dict[str, Any]
    lines: dict[str, int]
    failed: set[str]
    valid: bool


@dataclass
class Reader:
    """The problems found so far in one file, named ``file`` in messages."""

    file: str
    problems: list[ConfigProblem] = field(default_factory=list)

    def report(self, line: int, section: str, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, line, section, key, message))

    def read(
        self, section: Section, fields: dict[str, Field], context: Context
    ) -> SectionValues:
        """Parse the section's entries, reporting unknown keys and invalid values."""
        result = SectionValues({}, {}, set(), valid=True)
        for entry in section.entries:
            result.lines[entry.key] = entry.line
            field_spec = fields.get(entry.key)
            if field_spec is None:
                message = _unknown_key(entry.key, fields)
                self.report(entry.line, section.header, entry.key, message)
                result.valid = False
                continue

            try:
                result.values[entry.key] = field_spec.parse(entry.value, context)
            except InvalidValue as exc:
                # Other config formats start comments with '#', so a value
                # that fails with ' #' in it most likely carries such a comment.
                hint = COMMENT_HINT if TRAILING_HASH_COMMENT.search(entry.value) else ""
                for message in exc.messages:
                    self.report(entry.line, section.header, entry.key, message + hint)
                result.failed.add(entry.key)
                result.valid = False

        for key, field_spec in fields.items():
            if key not in result.lines:
                result.values[key] = field_spec.parse(field_spec.default, context)
        return result


def read_general(
    section: Section, reader: Reader, context: Context
) -> GeneralConfig | None:
    """Build ``[general]``, which needs its own prefix table outside the GB region."""
    result = reader.read(section, GENERAL_FIELDS, context)
    found = result.values
    home_country = found.get("home_country")
    no_prefixes = "prefixes" not in result.failed and found["prefixes"] is None
    if home_country not in (None, PACKAGED_PREFIXES_REGION) and no_prefixes:
        reader.report(
            section.line,
            section.header,
            "prefixes",
            f"missing; the packaged prefix table covers {PACKAGED_PREFIXES_REGION} "
            f"only, so set prefixes = PATH to a table for {home_country}",
        )
        return None

    if not result.valid:
        return None

    host, port = found.pop("fastagi_listen")
    return GeneralConfig(fastagi_host=host, fastagi_port=port, **found)


def read_ari(section: Section, reader: Reader, context: Context) -> AriConfig | None:
    """Build ``[ari]``, in which every key has a default."""
    result = reader.read(section, ARI_FIELDS, context)
    if not result.valid:
        return None
    return AriConfig(**result.values, lines=MappingProxyType(result.lines))


def read_trunk(
    section: Section,
    name: str,
    general: GeneralConfig | None,
    reader: Reader,
    context: Context,
) -> TrunkConfig | None:
    """Build ``[trunk NAME]``, which needs a rate deck or a default rate."""
    valid = True
    if not TRUNK_NAME_PATTERN.fullmatch(name):
        reader.report(
            section.line,
            section.header,
            "",
            f"{name!r} is not a trunk name; use ASCII letters (a-z, A-Z), digits, "
            "'-', '_' or '.'",
        )
        valid = False

    result = reader.read(section, TRUNK_FIELDS, context)
    found = result.values
    rating_keys = {"rates", "default_rate"}
    unrated = found.get("rates") is None and found.get("default_rate") is None
    if unrated and not rating_keys & result.failed:
        reader.report(
            section.line,
            section.header,
            "rates",
            "missing; set rates = PATH to a rate deck CSV, or default_rate = RATE "
            "to rate every destination alike",
        )
        valid = False

    needs_hours = found.get("bar_out_of_hours") and found.get("business_hours") is None
    if needs_hours and "business_hours" not in result.failed:
        reader.report(
            result.lines["bar_out_of_hours"],
            section.header,
            "bar_out_of_hours",
            "needs business_hours; set business_hours = DAYS HH:MM-HH:MM like "
            f"{HOURS_EXAMPLE}, or remove bar_out_of_hours",
        )
        valid = False

    def report(line: int, key: str, message: str) -> None:
        reader.report(line or section.line, section.header, key, message)

    offenders = build_offender_settings(
        found, result.lines, result.failed, context.home_country, report
    )
    if not (valid and result.valid and offenders) or general is None:
        return None

    found["timezone"] = found["timezone"] or general.timezone
    return TrunkConfig(name=name, offenders=offenders, **found)


def read_override(
    section: Section,
    numbers_text: str,
    trunk_names: set[str],
    reader: Reader,
    context: Context,
) -> NumberOverride | None:
    """Build ``[number NUMBER_OR_RANGE]``, which must allow or bar something."""
    numbers = None
    try:
        if LIST_SEPARATOR in numbers_text:
            raise InvalidValue(
                f"{numbers_text!r} lists several numbers; give each number or "
                "range its own [number] section"
            )
        bounds = parse_number_range(numbers_text, context.home_country)
        numbers = NumberRanges((bounds,))
    except InvalidValue as exc:
        for message in exc.messages:
            reader.report(section.line, section.header, "", message)

    result = reader.read(section, NUMBER_FIELDS, context)
    found = result.values
    valid = result.valid and numbers is not None
    trunk = found.get("trunk")
    if trunk is not None and trunk not in trunk_names:
        defined = ", ".join(sorted(trunk_names)) or "none defined"
        reader.report(
            result.lines["trunk"],
            section.header,
            "trunk",
            f"{trunk!r} is not a trunk; define [trunk {trunk}] or use one of "
            f"the trunks ({defined})",
        )
        valid = False

    allow = found.get("allow", frozenset())
    bar = found.get("bar", frozenset())
    if not allow and not bar and not {"allow", "bar"} & result.failed:
        reader.report(
            section.line,
            section.header,
            "allow",
            "missing; set allow = CATEGORIES or bar = CATEGORIES for this number",
        )
        valid = False

    for category in sorted(allow & bar):
        reader.report(
            result.lines["bar"],
            section.header,
            "bar",
            f"{category!r} is both allowed and barred; remove it from one of the lists",
        )
        valid = False

    if not valid:
        return None
    return NumberOverride(numbers=numbers, trunk=trunk, allow=allow, bar=bar,
                          header=section.header, line=section.line)


def _unknown_key(key: str, fields: dict[str, Field]) -> str:
    close = difflib.get_close_matches(key.lower(), fields, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown key; {hint}known keys are {', '.join(fields)}"
