"""Loading of the configuration file into a validated ``Config``."""

import codecs
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from callguard.config.delivery import read_smtp, read_webhook
from callguard.config.errors import ConfigError, ConfigProblem, InvalidValue
from callguard.config.fields import Context
from callguard.config.ini import Section, parse_ini
from callguard.config.model import AriConfig, Config, SmtpConfig, WebhookConfig
from callguard.config.sections import (
    PACKAGED_PREFIXES_REGION,
    Reader,
    read_ari,
    read_general,
    read_override,
    read_trunk,
)
from callguard.config.values import parse_region
from callguard.text import invalid_utf8

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/callguard/callguard.conf"

GENERAL_SECTION = "general"
ARI_SECTION = "ari"
SMTP_SECTION = "smtp"
WEBHOOK_SECTION = "webhook"
TRUNK_KIND = "trunk"
NUMBER_KIND = "number"
NAME_EXAMPLES = {TRUNK_KIND: "gamma", NUMBER_KIND: "01632960001"}


@dataclass
class _SectionsByKind:
    """The file's sections; a missing section without a name has line 0."""

    general: Section = field(default_factory=lambda: Section(GENERAL_SECTION, 0))
    ari: Section = field(default_factory=lambda: Section(ARI_SECTION, 0))
    smtp: Section = field(default_factory=lambda: Section(SMTP_SECTION, 0))
    webhook: Section = field(default_factory=lambda: Section(WEBHOOK_SECTION, 0))
    trunks: list[tuple[Section, str]] = field(default_factory=list)
    numbers: list[tuple[Section, str]] = field(default_factory=list)


def _invalid_utf8(file: str, exc: UnicodeDecodeError) -> ConfigProblem:
    """Return the problem of the first byte that is not UTF-8, at its line and byte column."""
    line, message = invalid_utf8(exc)
    return ConfigProblem(file, line, "", "", message)


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the configuration file at ``path``.

    Relative paths in values are resolved against the file's folder. Raises
    ``ConfigError`` listing every problem in the file, sorted by line.
    """
    file = os.fspath(path)
    config_path = Path(file).absolute()
    try:
        data = config_path.read_bytes()
    except OSError as exc:
        message = f"cannot be read ({exc}); check the path and its permissions"
        raise ConfigError([ConfigProblem(file, 0, "", "", message)]) from exc
    try:
        # The byte order mark that some Windows editors write is dropped.
        text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([_invalid_utf8(file, exc)]) from exc

    parsed, problems = parse_ini(text, file)
    reader = Reader(file, problems)
    sections = _group_sections(parsed, reader)
    context = Context(config_path.parent, _home_country(sections.general))
    general = read_general(sections.general, reader, context)
    ari = read_ari(sections.ari, reader, context)
    smtp = read_smtp(sections.smtp, reader, context)
    webhook = read_webhook(sections.webhook, reader, context)
    trunks = {}
    for section, name in sections.trunks:
        trunk = read_trunk(section, name, general, reader, context)
        if trunk is not None:
            trunks[name] = trunk

    trunk_names = {name for _, name in sections.trunks}
    overrides = []
    for section, numbers_text in sections.numbers:
        override = read_override(section, numbers_text, trunk_names, reader, context)
        if override is not None:
            overrides.append(override)

    if not sections.trunks and not reader.problems:
        # An empty or cut-off file would otherwise load, and a reload to it would
        # deny every outbound call.
        reader.report(0, "", "", "has no [trunk NAME] section, so every call would be "
                      "denied unknown-trunk; add one for each outbound trunk, like "
                      "[trunk gamma] with its rates")
    if reader.problems or general is None or ari is None:
        raise ConfigError(sorted(reader.problems, key=lambda problem: problem.line))

    _warn_about_ari_password(ari)
    _warn_about_delivery_secrets(smtp, webhook)
    logger.debug(
        "Loaded %s with %d trunks and %d number overrides",
        config_path,
        len(trunks),
        len(overrides),
    )
    return Config(
        path=config_path,
        general=general,
        ari=ari,
        trunks=MappingProxyType(trunks),
        overrides=tuple(overrides),
        smtp=smtp,
        webhook=webhook,
    )


def _group_sections(sections: list[Section], reader: Reader) -> _SectionsByKind:
    """Sort sections by kind and report headers that name no known kind."""
    grouped = _SectionsByKind()
    for section in sections:
        kind, _, name = section.header.partition(" ")
        if section.header == GENERAL_SECTION:
            grouped.general = section
        elif section.header == ARI_SECTION:
            grouped.ari = section
        elif section.header == SMTP_SECTION:
            grouped.smtp = section
        elif section.header == WEBHOOK_SECTION:
            grouped.webhook = section
        elif kind == TRUNK_KIND and name:
            grouped.trunks.append((section, name))
        elif kind == NUMBER_KIND and name:
            grouped.numbers.append((section, name))
        elif kind in NAME_EXAMPLES:
            reader.report(
                section.line,
                section.header,
                "",
                f"section needs a name; write it like [{kind} {NAME_EXAMPLES[kind]}]",
            )
        else:
            lowered = _lower_case_kind(section.header)
            if lowered is not None:
                message = ("unknown section, because section kinds are lower case; "
                           f"write it like [{lowered}]")
            else:
                message = ("unknown section; use [general], [ari], [smtp], [webhook], "
                           "[trunk NAME] or [number NUMBER_OR_RANGE]")
            reader.report(section.line, section.header, "", message)
    return grouped


def _lower_case_kind(header: str) -> str | None:
    """Return ``header`` with its kind in lower case, if that makes it a known kind."""
    kind, space, name = header.partition(" ")
    lowered = kind.lower()
    if lowered == kind:
        return None
    if not name and lowered in (GENERAL_SECTION, ARI_SECTION, SMTP_SECTION, WEBHOOK_SECTION):
        return lowered
    if name and lowered in (TRUNK_KIND, NUMBER_KIND):
        return f"{lowered}{space}{name}"
    return None


def _home_country(general: Section) -> str:
    """Return the region for parsing numbers, or GB while home_country is invalid.

    Falling back lets one load report both the bad region and any bad numbers.
    """
    for entry in general.entries:
        if entry.key == "home_country":
            try:
                return parse_region(entry.value)
            except InvalidValue:
                return PACKAGED_PREFIXES_REGION
    return PACKAGED_PREFIXES_REGION


def _warn_about_ari_password(ari: AriConfig) -> None:
    if not ari.enabled:
        return

    if ari.password_file is None:
        logger.warning(
            "ARI is enabled but [ari] password_file is not set, so callguard does "
            "not connect to %s and live calls are not metered or hung up; set "
            "password_file to the file that contains the ARI user's password, or "
            "set enabled = no in [ari] to run without ARI",
            ari.url,
        )
        return

    _warn_if_shared(ari.password_file, "ARI password file")


def _warn_about_delivery_secrets(
    smtp: SmtpConfig | None, webhook: WebhookConfig | None
) -> None:
    if smtp is not None and smtp.password_file is not None:
        _warn_if_shared(smtp.password_file, "SMTP password file")

    if webhook is None:
        return

    if webhook.secret_file is None:
        logger.warning(
            "[webhook] secret_file is not set, so alerts are posted without an "
            "X-Callguard-Signature header and the receiver cannot verify them"
        )
    else:
        _warn_if_shared(webhook.secret_file, "webhook secret file")


def _warn_if_shared(path: Path, what: str) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s %s is readable by other users (mode %o); restrict it with chmod 600",
            what,
            path,
            stat.S_IMODE(mode),
        )
