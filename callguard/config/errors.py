"""Problems in a configuration file, each tied to its file, line, section and key."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One invalid line of a configuration file, with the fix in ``message``.

    ``line`` is 1-based, or 0 when the problem concerns the whole file. ``section``
    and ``key`` are empty when the problem lies outside any section or key.
    """

    file: str
    line: int
    section: str
    key: str
    message: str

    def __str__(self) -> str:
        location = f"{self.file}:{self.line}:" if self.line else f"{self.file}:"
        parts = [location]
        if self.section:
            parts.append(f"[{self.section}]")
        if self.key:
            parts.append(f"{self.key}:")
        parts.append(self.message)
        return " ".join(parts)


class ConfigError(Exception):
    """A configuration file that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class InvalidValue(ValueError):
    """An invalid value, with one message per problem quoting the text and the fix."""

    def __init__(self, *messages: str) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))
