"""A small interpreter for the part of Asterisk's dialplan that callguard's snippet uses.

It reads an extensions.conf, matches extensions as pbx.c does (literal
extensions before ``_`` patterns, the most specific pattern first, and ``-``
ignored in both), substitutes ``${VAR}``, ``${VAR:offset:length}`` and the
functions LEN, ISNULL, CALLERID, REPLACE, FILTER, REGEX, FIELDNUM and TOLOWER,
evaluates ``$[...]`` with Asterisk's operator precedence, and runs Set, GotoIf,
Goto, Gosub, Return, AGI, Dial, Log, Verbose, NoOp and Hangup. Anything else
raises, so a snippet that grows past what is emulated fails its tests instead
of passing them untested.

An AGI() whose channel hung up during the session sets AGISTATUS to HANGUP
and returns -1 (agi_exec_full() in res/res_agi.c). After an application
returns non-zero, __ast_pbx_run() in main/pbx.c runs no further priority
except those of the ``h`` extension of the channel's current context, if it
has one, and so does this interpreter. Hangup handlers are not emulated.

The rules come from Asterisk's documentation at docs.asterisk.org and its
source (main/pbx.c, main/config.c, main/app.c, main/ast_expr2.fl,
main/ast_expr2.y and funcs/func_strings.c). A
``;`` starts a comment unless a backslash escapes it, and other backslashes
stay (Asterisk Configuration Files, Comments). A quoted operand is a string,
kept with its quotes, so ``"0999" = "999"`` is false. A comparison of two
unquoted numbers is numeric and every other comparison is a string
comparison, and ``|`` returns its left side unless that is empty or 0
(Dialplan, Expressions, Operators). NOTE: the empty substring for length 0 is
not checked against a running Asterisk.
"""

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_STEPS = 200

# The AGISTATUS of a session during which the channel hung up.
AGI_HANGUP = "HANGUP"

# (AGISTATUS, variables the AGI program set) for an AGI(url, args...) call.
AGIRunner = Callable[[str, list[str], dict[str, str]], Awaitable[tuple[str, dict[str, str]]]]


@dataclass
class Priority:
    label: str
    application: str
    data: str


@dataclass
class Outcome:
    """What one call through the dialplan did."""

    dials: list[list[str]] = field(default_factory=list)  # Dial()'s arguments
    hangup_cause: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)
    verbose: list[str] = field(default_factory=list)
    agi_calls: list[list[str]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    # The channel hung up during an application, which ended the dialplan.
    hung_up: bool = False


class DialplanError(Exception):
    """The dialplan uses something this interpreter does not emulate, or is malformed."""


class Dialplan:
    def __init__(self, text: str):
        self.globals: dict[str, str] = {}
        self.contexts: dict[str, dict[str, list[Priority]]] = {}
        self._parse(text)

    def _parse(self, text: str) -> None:
        context = None
        last_exten = None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                context = line[1:-1]
                self.contexts.setdefault(context, {})
                continue
            if context is None:
                raise DialplanError(f"line {number}: {line!r} outside a context")
            if context == "globals":
                name, _, value = line.partition("=")
                self.globals[name.strip()] = value.strip()
                continue

            kind, arrow, rest = line.partition("=>")
            kind = kind.strip()
            if not arrow or kind not in ("exten", "same"):
                raise DialplanError(f"line {number}: invalid dialplan line {line!r}")
            if kind == "exten":
                exten, _, rest = rest.strip().partition(",")
                last_exten = exten.strip()
            elif last_exten is None:
                raise DialplanError(f"line {number}: 'same' before any 'exten'")
            priority, _, call = rest.strip().partition(",")
            label = ""
            match = re.fullmatch(r"(\w+)\((\w[\w-]*)\)", priority.strip())
            if match:
                priority, label = match[1], match[2]
            application, data = _split_call(call.strip(), number)
            self.contexts[context].setdefault(last_exten, []).append(
                Priority(label, application, data))

    async def run(self, context: str, exten: str, *, agi: AGIRunner, callerid: str = "",
                  globals: dict[str, str] | None = None,
                  variables: dict[str, str] | None = None) -> Outcome:
        """Run a call to ``exten`` in ``context`` until it hangs up or runs out of priorities.

        ``variables`` are on the channel before it enters ``context``.
        """
        outcome = Outcome()
        channel: dict[str, str] = dict(variables or {})
        shared = dict(self.globals) | dict(globals or {})
        pattern = self._match(context, exten)
        index = 0
        # Where each Gosub returns to: context, extension, pattern, index.
        returns: list[tuple[str, str, str, int]] = []

        for _ in range(MAX_STEPS):
            priorities = self.contexts[context][pattern]
            if index >= len(priorities):
                break
            step = priorities[index]
            index += 1

            builtins = {"EXTEN": exten, "CONTEXT": context}
            data = _substitute(step.data, channel, shared, builtins, callerid)
            application = step.application.lower()

            if application == "set":
                name, _, value = data.partition("=")
                channel[name.strip()] = value
            elif application == "noop":
                pass
            elif application == "log":
                level, _, message = data.partition(",")
                outcome.logs.append((level, message))
            elif application == "verbose":
                _, _, message = data.partition(",")
                outcome.verbose.append(message)
            elif application == "hangup":
                outcome.hangup_cause = data or "16"
                break
            elif application == "dial":
                outcome.dials.append(_split_arguments(data))
            elif application == "agi":
                arguments = _split_arguments(data)
                outcome.agi_calls.append(arguments)
                status, variables = await agi(arguments[0], arguments[1:], dict(channel))
                channel.update(variables)
                channel["AGISTATUS"] = status
                if status == AGI_HANGUP:
                    outcome.hung_up = True
                    if exten == "h" or not self._has_extension(context, "h"):
                        break
                    exten, pattern, index = "h", self._match(context, "h"), 0
                    returns.clear()
            elif application in ("goto", "gotoif"):
                target = data
                if application == "gotoif":
                    condition, _, labels = data.partition("?")
                    when_true, _, when_false = labels.partition(":")
                    target = when_true if _truthy(condition.strip()) else when_false
                if not target:
                    continue
                context, exten, label = _target(target, context, exten)
                pattern = self._match(context, exten)
                index = self._find(context, pattern, label)
            elif application == "gosub":
                if "(" in data:
                    raise DialplanError(f"Gosub arguments are not emulated: {data!r}")
                returns.append((context, exten, pattern, index))
                context, exten, label = _target(data, context, exten)
                pattern = self._match(context, exten)
                index = self._find(context, pattern, label)
            elif application == "return":
                if data:
                    raise DialplanError(f"a Return value is not emulated: {data!r}")
                if not returns:
                    raise DialplanError("Return without a Gosub")
                context, exten, pattern, index = returns.pop()
            else:
                raise DialplanError(f"application {step.application!r} is not emulated")
        else:
            raise DialplanError(f"more than {MAX_STEPS} steps: a loop in the dialplan?")

        outcome.variables = channel
        return outcome

    def _match(self, context: str, exten: str) -> str:
        """Return the extension of ``context`` that Asterisk runs for ``exten``.

        pbx.c skips every ``-`` of the dialled string and of the extension, so
        ``9-9-9`` is extension 999. Of several matching patterns it takes the
        most specific (ext_cmp_pattern()).
        """
        extensions = self.contexts.get(context)
        if extensions is None:
            raise DialplanError(f"no context [{context}]")
        dialled = exten.replace("-", "")
        for name in extensions:
            if not name.startswith("_") and name.replace("-", "") == dialled:
                return name
        patterns = sorted((name for name in extensions if name.startswith("_")),
                          key=_pattern_specificity)
        for pattern in patterns:
            if _pattern_regex(pattern[1:]).fullmatch(dialled):
                return pattern
        raise DialplanError(f"no extension of [{context}] matches {exten!r}")

    def _has_extension(self, context: str, exten: str) -> bool:
        try:
            self._match(context, exten)
        except DialplanError:
            return False
        return True

    def _find(self, context: str, pattern: str, label: str) -> int:
        priorities = self.contexts[context][pattern]
        if label.isdigit():
            return int(label) - 1
        for index, step in enumerate(priorities):
            if step.label == label:
                return index
        raise DialplanError(f"no label {label!r} in [{context}] {pattern}")


def _strip_comment(line: str) -> str:
    """Cut ``line`` at its first ``;`` that no backslash escapes, as config.c does.

    The backslash of ``\\;`` is dropped. Other backslashes stay for the
    functions that read them.
    """
    result = []
    for char in line:
        if char == ";":
            if result and result[-1] == "\\":
                result[-1] = char
                continue
            break
        result.append(char)
    return "".join(result)


def _split_call(call: str, number: int) -> tuple[str, str]:
    name, paren, rest = call.partition("(")
    if not paren:
        return name, ""
    if not rest.endswith(")"):
        raise DialplanError(f"line {number}: {call!r} does not end with ')'")
    return name, rest[:-1]


def _split_arguments(data: str) -> list[str]:
    """Split application arguments on commas outside brackets and quotes."""
    arguments, current, depth, quoted = [], [], 0, False
    for char in data:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        elif char == "," and depth == 0 and not quoted:
            arguments.append("".join(current))
            current = []
            continue
        current.append(char)
    arguments.append("".join(current))
    return arguments


def _target(target: str, context: str, exten: str) -> tuple[str, str, str]:
    parts = [part.strip() for part in target.split(",")]
    if len(parts) == 1:
        return context, exten, parts[0]
    if len(parts) == 2:
        return context, parts[0], parts[1]
    return parts[0], parts[1], parts[2]


_PATTERN_CLASSES = {"X": "0123456789", "Z": "123456789", "N": "23456789"}
# The ranks that ext_cmp_pattern_pos() in pbx.c gives wildcards and the end of
# a pattern, above any character set.
_RANK_ONE_OR_MORE = 0x18000
_RANK_ZERO_OR_MORE = 0x28000
_RANK_END = 0x30000


def _pattern_positions(pattern: str) -> list[str]:
    """Split a pattern without its ``_`` into character sets and wildcards.

    A set is a string of its characters, and ``.`` and ``!`` stay as they
    are. ``-`` outside brackets is skipped, and inside them it makes a range.
    """
    positions: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "-":
            continue
        if char in ".!":
            positions.append(char)
        elif char.upper() in _PATTERN_CLASSES:
            positions.append(_PATTERN_CLASSES[char.upper()])
        elif char == "[":
            end = pattern.index("]", index)
            members = _character_set(pattern[index:end])
            index = end + 1
            if members:  # pbx.c ignores an empty set
                positions.append(members)
        else:
            positions.append(char)
    return positions


def _character_set(body: str) -> str:
    members, index = [], 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            first, last = ord(body[index]), ord(body[index + 2])
            members.extend(chr(code) for code in range(first, last + 1))
            index += 3
        else:
            members.append(body[index])
            index += 1
    return "".join(sorted(set(members)))


def _pattern_regex(pattern: str) -> re.Pattern:
    regex = []
    for position in _pattern_positions(pattern):
        if position == ".":
            regex.append(".+")
        elif position == "!":
            regex.append(".*")
        else:
            regex.append("[" + "".join(re.escape(char) for char in position) + "]")
    return re.compile("".join(regex), re.S)


def _pattern_specificity(name: str) -> list[tuple[int, tuple[int, ...]]]:
    """Return a sort key that puts more specific patterns first, as ext_cmp() does.

    Each position ranks by the size of its character set, then by its lowest
    character. At equal rank, the set with the lowest character that the other
    set lacks comes first, because pbx.c compares the sets' bitmaps.
    """
    key = []
    positions: list[str | None] = [*_pattern_positions(name[1:]), None]
    for position in positions:
        if position is None:
            key.append((_RANK_END, ()))
        elif position == ".":
            key.append((_RANK_ONE_OR_MORE, ()))
        elif position == "!":
            key.append((_RANK_ZERO_OR_MORE, ()))
        else:
            rank = (len(position) << 8) | ord(position[0])
            key.append((rank, tuple(ord(char) for char in position)))
    return key


# -- substitution ---------------------------------------------------------------


def _substitute(text: str, channel: dict, shared: dict, builtins: dict, callerid: str) -> str:
    """Replace each ${...} and $[...] in ``text``, innermost first, as Asterisk does."""
    out, index = [], 0
    while index < len(text):
        if text.startswith("${", index) or text.startswith("$[", index):
            opening, closing = text[index + 1], "}" if text[index + 1] == "{" else "]"
            end = _closing(text, index + 2, opening, closing)
            inner = _substitute(text[index + 2:end], channel, shared, builtins, callerid)
            if opening == "{":
                out.append(_variable(inner, channel, shared, builtins, callerid))
            else:
                out.append(evaluate(inner))
            index = end + 1
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    depth = 1
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index
    raise DialplanError(f"no closing {closing!r} in {text!r}")


def _variable(name: str, channel: dict, shared: dict, builtins: dict, callerid: str) -> str:
    def lookup(variable: str) -> str:
        return builtins.get(variable, channel.get(variable, shared.get(variable, "")))

    call = re.fullmatch(r"([A-Z_]+)\((.*)\)", name, re.S)
    if call:
        return _function(call[1], call[2], lookup, callerid)

    base, *slice_parts = name.split(":")
    value = lookup(base)
    if not slice_parts:
        return value
    offset = int(slice_parts[0])
    length = int(slice_parts[1]) if len(slice_parts) > 1 else None
    if offset < 0:
        offset = max(0, len(value) + offset)
    value = value[offset:]
    # A negative length drops that many characters from the end.
    return value if length is None else value[:length]


# -- functions --------------------------------------------------------------------


def _function(function: str, argument: str, lookup: Callable[[str], str],
              callerid: str) -> str:
    """Return the value of ``${FUNCTION(argument)}`` as Asterisk substitutes it."""
    if function == "LEN":
        return str(len(argument))
    if function == "ISNULL":
        return "1" if argument == "" else "0"
    if function == "CALLERID" and argument == "num":
        return callerid
    if function == "REPLACE":
        return _replace(argument, lookup)
    if function == "FILTER":
        return _filter(argument)
    if function == "REGEX":
        return _regex(argument)
    if function == "FIELDNUM":
        return _fieldnum(argument, lookup)
    if function == "TOLOWER":
        # string_tolower() in funcs/func_strings.c applies C's tolower() to
        # each byte, which in the C locale changes only A to Z.
        return "".join(char.lower() if "A" <= char <= "Z" else char for char in argument)
    raise DialplanError(f"function {function}({argument}) is not emulated")


def _separate_arguments(data: str, count: int, delimiter: str = ",",
                        remove_chars: bool = True) -> list[str]:
    """Split function arguments as __ast_app_separate_args() in main/app.c does.

    A delimiter inside brackets, parentheses or quotes separates nothing. Only
    the first ``count - 1`` arguments are scanned, and the last gets the rest
    of ``data`` unchanged. In the scanned ones, ``remove_chars`` drops quotes
    and backslashes, and a backslash makes the next character literal.
    """
    arguments: list[str] = []
    position = 0
    after_delimiter = False
    paren = bracket = 0
    quoted = False
    while position < len(data) and len(arguments) < count - 1:
        argument: list[str] = []
        after_delimiter = False
        while position < len(data):
            char = data[position]
            position += 1
            if char == "(":
                paren += 1
            elif char == ")":
                paren = max(paren - 1, 0)
            elif char == "[":
                bracket += 1
            elif char == "]":
                bracket = max(bracket - 1, 0)
            elif char == '"' and delimiter != '"':
                quoted = not quoted
                if remove_chars:
                    continue
            elif char == "\\":
                if not remove_chars:
                    argument.append(char)
                argument.append(data[position:position + 1])
                position += 1
                continue
            elif char == delimiter and not (paren or quoted or bracket):
                after_delimiter = True
                break
            argument.append(char)
        arguments.append("".join(argument))
    if position < len(data) or after_delimiter:
        arguments.append(data[position:])
    return arguments


def _encoded_characters(text: str, description: str) -> str:
    # ast_get_encoded_str() would decode backslash escapes such as \x2C.
    if "\\" in text:
        raise DialplanError(f"backslash escapes in {description} {text!r} are not emulated")
    return text


def _replace(argument: str, lookup: Callable[[str], str]) -> str:
    """Delete or replace characters of a variable as REPLACE() does.

    The syntax is REPLACE(varname,find-chars[,replace-char]).
    """
    arguments = _separate_arguments(argument, 3)
    if len(arguments) < 2:
        raise DialplanError(f"REPLACE({argument}) needs a variable and characters")
    find = _encoded_characters(arguments[1], "REPLACE characters")
    replacement = _encoded_characters(arguments[2] if len(arguments) > 2 else "",
                                      "a REPLACE character")[:1]
    value = lookup(arguments[0])
    return "".join(replacement if char in find else char for char in value)


def _filter(argument: str) -> str:
    """Keep the allowed characters, as FILTER(allowed-chars,string) with ranges like 0-9."""
    arguments = _separate_arguments(argument, 2, remove_chars=False)
    if len(arguments) < 2:
        raise DialplanError(f"FILTER({argument}) needs allowed characters and a string")
    allowed_text = _encoded_characters(arguments[0], "FILTER characters")
    allowed: set[str] = set()
    index = 0
    while index < len(allowed_text):
        first = allowed_text[index]
        if allowed_text[index + 1:index + 2] == "-":
            if index + 2 >= len(allowed_text):
                raise DialplanError(f"FILTER range without an end in {allowed_text!r}")
            last = allowed_text[index + 2]
            allowed.update(chr(code) for code in range(ord(first), ord(last) + 1))
            index += 3
        else:
            allowed.add(first)
            index += 1
    return "".join(char for char in arguments[1] if char in allowed)


def _regex(argument: str) -> str:
    """Return 1 if REGEX("regular expression" string) finds the POSIX extended expression.

    regexec() searches the whole string, as re.search() does. The expressions
    that this emulates have no backslash, ``$`` or POSIX class, where Python's
    syntax differs.
    """
    arguments = _separate_arguments(argument, 3, delimiter='"')
    if len(arguments) != 3 or arguments[0]:
        raise DialplanError(f'REGEX({argument}) is not of the form "regex" string')
    expression, text = arguments[1], arguments[2]
    if any(part in expression for part in ("\\", "$", "[:")):
        raise DialplanError(f"REGEX expression {expression!r} is not emulated")
    if text[:1] in (" ", "\t"):
        text = text[1:]
    return "1" if re.search(expression, text) else "0"


def _fieldnum(argument: str, lookup: Callable[[str], str]) -> str:
    """Return the 1-based position of a value in a list, or 0, as FIELDNUM() does.

    The syntax is FIELDNUM(varname,delim,value).
    """
    arguments = _separate_arguments(argument, 3)
    if len(arguments) < 3:
        raise DialplanError(f"FIELDNUM({argument}) needs a variable, a delimiter and a value")
    name, delimiter, value = arguments
    delimiter = _encoded_characters(delimiter, "a FIELDNUM delimiter")
    text = lookup(name)
    if not text or not delimiter:
        return "0"
    fields = text.split(delimiter[0])
    return str(fields.index(value) + 1) if value in fields else "0"


# -- expressions ------------------------------------------------------------------

_TOKEN = re.compile(r'\s*("(?:[^"])*"|!=|<=|>=|[|&=<>()+\-]|[^\s|&=<>!()+\-"]+)')


def evaluate(expression: str) -> str:
    """Evaluate a ``$[...]`` body and return its value as Asterisk writes it."""
    tokens = _tokens(expression)
    if not tokens:
        return ""
    parser = _Parser(tokens)
    value = parser.parse_or()
    if parser.position != len(tokens):
        raise DialplanError(f"cannot evaluate {expression!r}")
    return str(value)


def _tokens(expression: str) -> list[str]:
    tokens, index = [], 0
    while index < len(expression):
        match = _TOKEN.match(expression, index)
        if match is None:
            if expression[index:].strip():
                raise DialplanError(f"cannot read {expression[index:]!r}")
            break
        tokens.append(match[1])
        index = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def parse_or(self) -> str:
        left = self.parse_and()
        while self._peek() == "|":
            self._take()
            right = self.parse_and()
            left = left if _truthy(left) else right
        return left

    def parse_and(self) -> str:
        left = self.parse_comparison()
        while self._peek() == "&":
            self._take()
            right = self.parse_comparison()
            left = left if _truthy(left) and _truthy(right) else "0"
        return left

    def parse_comparison(self) -> str:
        left = self.parse_sum()
        while self._peek() in ("=", "!=", "<", ">", "<=", ">="):
            operator = self._take()
            right = self.parse_sum()
            left = "1" if _compare(left, operator, right) else "0"
        return left

    def parse_sum(self) -> str:
        left = self.parse_atom()
        while self._peek() in ("+", "-"):
            operator = self._take()
            right = self.parse_atom()
            if not (_integer(left) and _integer(right)):
                raise DialplanError(f"non-integer operand of {operator}: {left!r}, {right!r}")
            total = int(left) + int(right) if operator == "+" else int(left) - int(right)
            left = str(total)
        return left

    def parse_atom(self) -> str:
        token = self._take()
        if token == "(":
            value = self.parse_or()
            if self._take() != ")":
                raise DialplanError("missing ')'")
            return value
        if token == "-" and _integer(self._peek() or ""):
            return str(-int(self._take()))
        if token.startswith('"') and token.endswith('"') and len(token) >= 2:
            return _Quoted(token)
        return token


class _Quoted(str):
    """A quoted operand. ast_expr2.fl keeps the quotes, so it is never a number."""


def _integer(value: str) -> bool:
    return not isinstance(value, _Quoted) and re.fullmatch(r"-?\d+", value) is not None


def _number(value: str) -> bool:
    return not isinstance(value, _Quoted) and re.fullmatch(r"-?\d+(\.\d+)?", value) is not None


def _compare(left: str, operator: str, right: str) -> bool:
    if _number(left) and _number(right):
        a, b = float(left), float(right)
    else:
        a, b = str(left), str(right)
    return {"=": a == b, "!=": a != b, "<": a < b, ">": a > b,
            "<=": a <= b, ">=": a >= b}[operator]


def _truthy(value: str) -> bool:
    if isinstance(value, _Quoted):
        return True  # is_zero_or_null() in ast_expr2.y: a quoted string is never 0
    value = value.strip()
    return value != "" and not (_integer(value) and int(value) == 0)
