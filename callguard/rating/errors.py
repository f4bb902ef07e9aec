"""The error raised for an invalid rate deck, and the list that collects its causes."""

# Enough to fix a deck in a few passes without flooding a log with a bad file.
MAX_REPORTED_ERRORS = 20


class RateDeckError(ValueError):
    """An invalid rate deck.

    ``errors`` contains up to MAX_REPORTED_ERRORS messages, each of the form
    ``<file>:<line>: <column> '<value>' is invalid; <fix>``. ``error_count`` is the
    number of errors found, reported or not.
    """

    def __init__(self, errors: list[str], error_count: int | None = None) -> None:
        self.errors = tuple(errors)
        self.error_count = len(errors) if error_count is None else error_count

        lines = list(self.errors)
        omitted = self.error_count - len(self.errors)
        if omitted > 0:
            lines.append(f"... and {omitted} more errors")
        super().__init__("\n".join(lines))


class ErrorList:
    """The errors found while loading one deck, in the order they were found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.messages: list[str] = []
        self.count = 0

    def add(self, line: int | None, message: str) -> None:
        """Record an error at ``line``, or at the whole file when ``line`` is None."""
        self.count += 1
        if len(self.messages) >= MAX_REPORTED_ERRORS:
            return

        if line is None:
            self.messages.append(f"{self.source}: {message}")
        else:
            self.messages.append(f"{self.source}:{line}: {message}")

    def raise_if_any(self) -> None:
        """Raise RateDeckError listing the recorded errors, if there are any."""
        if self.count:
            raise RateDeckError(self.messages, self.count)
