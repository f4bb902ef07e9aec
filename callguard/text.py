"""Small helpers for the text of log lines, audit entries and command output."""


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """Return ``count`` with the noun that fits it: ``1 trunk``, ``2 trunks``."""
    noun = singular if count == 1 else plural_form or singular + "s"
    return f"{count} {noun}"
