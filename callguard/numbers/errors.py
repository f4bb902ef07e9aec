"""Exceptions raised for dialled strings that callguard cannot place or classify."""


class InvalidNumber(ValueError):
    """A dialled string that is not a well-formed number of a possible length.

    The message names the problem and quotes the string with ``repr``, so control
    characters never reach a log raw.
    """


class UnclassifiedNumber(ValueError):
    """A well-formed number that no rule of the prefix table classifies.

    Callers deny such calls, because an unknown destination may be expensive.
    """


def quote(text: str, limit: int = 64) -> str:
    """Return ``repr(text)``, cut to ``limit`` characters, for use in messages."""
    if len(text) <= limit:
        return repr(text)

    return repr(text[:limit]) + f"... ({len(text)} characters)"
