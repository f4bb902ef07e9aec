"""Reader for INI files in Asterisk's style that keeps the line of every entry.

The syntax is the subset of Asterisk's config files that callguard uses: ``[section]``
headers, ``key = value`` or ``key => value`` entries, and ``;`` comments that run to
the end of the line unless the semicolon is escaped as ``\\;``. Asterisk's templates,
``#include`` and ``#exec`` directives and ``;-- --;`` block comments are not supported.
"""

from dataclasses import dataclass, field

from callguard.config.errors import ConfigProblem
from callguard.urls import mask_url

COMMENT_START = ";"
ESCAPED_COMMENT_START = "\\;"
SECTION_OPEN = "["
SECTION_CLOSE = "]"
ASSIGN = "="
ARROW_SUFFIX = ">"
DIRECTIVE_START = "#"


@dataclass(frozen=True)
class Entry:
    """A ``key = value`` line, with the value's comment and outer whitespace removed."""

    key: str
    value: str
    line: int


@dataclass
class Section:
    """A ``[header]`` and its entries, in file order.

    ``header`` is the text between the brackets with runs of whitespace collapsed to
    one space, so ``[trunk   gamma]`` and ``[trunk gamma]`` are the same section.
    """

    header: str
    line: int
    entries: list[Entry] = field(default_factory=list)


def strip_comment(text: str) -> str:
    """Remove a ``;`` comment and outer whitespace, turning each ``\\;`` into ``;``."""
    characters = []
    index = 0
    while index < len(text):
        if text.startswith(ESCAPED_COMMENT_START, index):
            characters.append(COMMENT_START)
            index += len(ESCAPED_COMMENT_START)
            continue

        if text[index] == COMMENT_START:
            break

        characters.append(text[index])
        index += 1

    return "".join(characters).strip()


def parse_ini(text: str, file: str) -> tuple[list[Section], list[ConfigProblem]]:
    """Split ``text`` into sections and report every line that breaks the syntax.

    A repeated section or a repeated key within one section is reported, and only its
    first occurrence is kept. Entries under a malformed header are dropped, because
    they belong to no known section.
    """
    sections: list[Section] = []
    problems: list[ConfigProblem] = []
    by_header: dict[str, Section] = {}
    current: Section | None = None
    skipping = False

    def report(line: int, section: str, key: str, message: str) -> None:
        problems.append(ConfigProblem(file, line, section, key, message))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = strip_comment(raw)
        if not line:
            continue

        if line.startswith(DIRECTIVE_START):
            report(
                number,
                current.header if current else "",
                "",
                f"{mask_url(line)!r} is not supported; callguard reads no #include or #exec "
                "directives, so copy the settings into this file",
            )
            continue

        if line.startswith(SECTION_OPEN):
            header = _parse_header(line)
            if header is None:
                report(
                    number,
                    "",
                    "",
                    f"{mask_url(line)!r} is not a section header; write it like [trunk gamma]",
                )
                current = None
                skipping = True
                continue

            first = by_header.get(header)
            if first is not None:
                report(
                    number,
                    header,
                    "",
                    f"duplicate section, first defined on line {first.line}; "
                    "merge the two sections into one",
                )
                current = None
                skipping = True
                continue

            current = Section(header, number)
            by_header[header] = current
            sections.append(current)
            skipping = False
            continue

        if skipping:
            continue

        key, separator, value = line.partition(ASSIGN)
        key = key.strip()
        if value.startswith(ARROW_SUFFIX):
            value = value[len(ARROW_SUFFIX) :]
        value = value.strip()

        if not separator or not key:
            report(
                number,
                current.header if current else "",
                "",
                f"{mask_url(line)!r} is not a setting; write it like key = value",
            )
            continue

        if current is None:
            report(
                number,
                "",
                key,
                "setting outside any section; put it under a header such as [general]",
            )
            continue

        first_entry = next((e for e in current.entries if e.key == key), None)
        if first_entry is not None:
            report(
                number,
                current.header,
                key,
                f"duplicate key, first set on line {first_entry.line}; "
                "remove one of the two lines",
            )
            continue

        current.entries.append(Entry(key, value, number))

    return sections, problems


def _parse_header(line: str) -> str | None:
    if not line.endswith(SECTION_CLOSE):
        return None

    inner = line[len(SECTION_OPEN) : -len(SECTION_CLOSE)]
    if SECTION_OPEN in inner or SECTION_CLOSE in inner:
        return None

    header = " ".join(inner.split())
    return header or None
