"""Normalisation of dialled strings to E.164 under a home numbering plan."""

from collections.abc import Iterable

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, PhoneNumberType

from callguard.numbers.dialstring import (
    MAX_DIALLED_CHARACTERS,
    PLUS,
    TEL_SCHEME,
    parse_dial_string,
    remove_layout,
    remove_separators,
)
from callguard.numbers.errors import InvalidNumber, quote
from callguard.numbers.number import Number
from callguard.numbers.region import (
    HomeRegion,
    kept_national_prefix,
    leading_digits_problem,
    length_problem,
    rewrite_problem,
    starts_with_premium_rate,
)
from callguard.numbers.settings import (
    DEFAULT_EMERGENCY_NUMBERS,
    check_emergency_numbers,
    check_outside_line_prefix,
)
from callguard.numbers.shortcut import parse_international, parse_national

UNKNOWN_REGION = "ZZ"

# Additions that phones put around a number. "#" is the key pressed to send
# the number, and is removed only when looking for an emergency number. The
# caller-ID prefixes withhold or show the caller ID for one call (in GB, 141
# and 1470).
SEND_KEY = "#"
CALLER_ID_PREFIXES = {"GB": ("141", "1470")}
# Prefixes that put one call through the text relay service, which charges it
# as a call to the number after the prefix: in GB, Relay UK's 18001 from a
# textphone and 18002 to one. Unlike a caller-ID prefix, they are not removed
# before an emergency number, because text relay has an emergency number of
# its own (18000 in GB).
TEXT_RELAY_PREFIXES = {"GB": ("18001", "18002")}

_CALLER_CHARACTERS = frozenset("0123456789 -.()+")
_PARSE_PROBLEMS = {
    NumberParseException.INVALID_COUNTRY_CODE: "has an unassigned country code",
    NumberParseException.NOT_A_NUMBER: "is not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short",
    NumberParseException.TOO_SHORT_NSN: "is too short",
    NumberParseException.TOO_LONG: "is too long",
}


class NumberPlan:
    """Dialling rules of a PBX: home country, outside-line prefix, emergency numbers.

    ``home_country`` is an ISO 3166-1 region code. ``outside_line_prefix`` is the
    digit string that users dial to get a line (``9``), or empty. When a
    dialled string starts with it, it is stripped once, so it is optional. It
    is kept where something comes first, as in ``-9...``, because the dialplan
    then sends it to the trunk. Raises ``ValueError`` for a bad setting.
    """

    def __init__(
        self,
        home_country: str = "GB",
        outside_line_prefix: str = "",
        emergency_numbers: Iterable[str] = DEFAULT_EMERGENCY_NUMBERS,
    ) -> None:
        if not isinstance(home_country, str):
            raise ValueError(
                f"home country must be a region code such as 'GB', not {home_country!r}"
            )

        self._home = HomeRegion(home_country.strip().upper())
        self.home_country: str = self._home.region
        self.country_code: int = self._home.country_code
        self.national_prefix: str = self._home.national_prefix
        self.short_code_max_length: int = self._home.short_code_max_length
        self.outside_line_prefix: str = check_outside_line_prefix(outside_line_prefix)
        self.emergency_numbers: tuple[str, ...] = check_emergency_numbers(
            emergency_numbers
        )
        self._emergency_set = frozenset(self.emergency_numbers)
        self._caller_id_prefixes = CALLER_ID_PREFIXES.get(self.home_country, ())
        self._call_prefixes = self._caller_id_prefixes + TEXT_RELAY_PREFIXES.get(
            self.home_country, ())

    def __repr__(self) -> str:
        return (
            f"NumberPlan(home_country={self.home_country!r}, "
            f"outside_line_prefix={self.outside_line_prefix!r}, "
            f"emergency_numbers={self.emergency_numbers!r})"
        )

    def emergency(self, dialled: str) -> str | None:
        """Return the configured emergency number that ``dialled`` is, or None.

        Spaces, dashes, dots and brackets are removed first, so ``9 9 9`` and
        ``(999)`` match. The number also matches after the outside-line prefix
        or a per-call caller-ID prefix (``141999`` in GB), and followed by the
        send key ``#`` pressed once or more, so that no way a phone sends an
        emergency number is refused. ``9990`` or ``999#1`` is not an emergency number.
        """
        return self.emergency_among(self.emergency_forms(dialled))

    def emergency_among(self, forms: list[str]) -> str | None:
        """Return the first of ``forms`` that is a configured emergency number, or None."""
        for form in forms:
            if form in self._emergency_set:
                return form
        return None

    def emergency_forms(self, dialled: str) -> list[str]:
        """Return the digit strings that ``dialled`` may be, if it is an emergency number.

        The first is ``dialled`` without separators and brackets; the others
        drop the send key, the outside-line prefix and a caller-ID prefix, in
        that order. The outside-line prefix is also dropped after a caller-ID
        prefix, for callers who dial them the other way round (141 9 999).
        """
        if not isinstance(dialled, str):
            return []

        # Brackets are removed too, because normalise() drops them before it
        # strips the outside-line prefix and would read (999) as 9 and 99.
        compact = remove_layout(dialled.strip())
        if compact[: len(TEL_SCHEME)].lower() == TEL_SCHEME:
            compact = compact[len(TEL_SCHEME) :]
        forms = [compact]
        if compact.endswith(SEND_KEY):
            compact = compact.rstrip(SEND_KEY)
            forms.append(compact)

        bases = [compact]
        prefix = self.outside_line_prefix
        if prefix and compact.startswith(prefix):
            bases.append(compact[len(prefix) :])
            forms.append(bases[-1])

        for base in bases:
            for caller_id_prefix in self._caller_id_prefixes:
                if base.startswith(caller_id_prefix):
                    rest = base[len(caller_id_prefix) :]
                    forms.append(rest)
                    if prefix and rest.startswith(prefix):
                        forms.append(rest[len(prefix) :])
        return forms

    def plain_national_digits(self, dialled: str) -> str | None:
        """Return the digits of ``dialled`` if it is a plain national number, else None.

        Plain means ASCII digits with at most spaces, dashes and dots between
        them, starting with the national prefix but not with the international
        prefix, the outside-line prefix or a caller-ID or text relay prefix.
        normalise() reads such a string as national_number() does, and its
        only emergency form (emergency_forms()) is the digits themselves.
        Most dialled numbers are plain, and this test is quicker than the
        steps that normalise() takes for any string.
        """
        if (type(dialled) is not str or len(dialled) > MAX_DIALLED_CHARACTERS
                or not dialled.isascii()):
            return None
        digits = remove_separators(dialled)
        if not digits.isdigit():
            return None
        prefix = self.national_prefix
        if not prefix or not digits.startswith(prefix):
            return None
        outside = self.outside_line_prefix
        if outside and digits.startswith(outside):
            return None
        if digits.startswith(self._call_prefixes) or self._home.international_prefix_length(digits):
            return None
        return digits

    def national_number(self, dialled: str, digits: str) -> Number:
        """Return normalise(dialled) for the ``digits`` that plain_national_digits() returned.

        Raises ``InvalidNumber`` as normalise() does.
        """
        return self._national(dialled, digits)

    def normalise(self, dialled: str) -> Number:
        """Return the E.164 and national forms of ``dialled``.

        Raises ``InvalidNumber`` for forbidden characters, a malformed prefix or an
        impossible length.
        """
        return self._normalise(dialled, strip_outside_line=True)

    def normalise_caller(self, text: str) -> str | None:
        """Return a caller's number (CLI) in E.164, or None when there is none.

        None covers empty and withheld CLIs (``anonymous``, ``unknown``), short
        codes and anything that cannot be read as a number. This never raises.
        Besides the dialled forms, CLIs without ``+`` or national prefix such as
        ``441632960000`` are accepted, as trunks often send them that way.
        """
        if not isinstance(text, str):
            return None

        stripped = text.strip()
        if not stripped:
            return None

        try:
            number = self._normalise(stripped, strip_outside_line=False)
        except InvalidNumber:
            number = None

        if number is not None:
            return number.e164 or None

        return self._parse_caller_leniently(stripped)

    def _normalise(self, dialled: str, strip_outside_line: bool,
                   strip_call_prefix: bool = False) -> Number:
        """Read ``dialled``. Only ``strip_outside_line`` drops the outside-line
        prefix, and either flag drops a caller-ID or text relay prefix."""
        def home_lead(digits: str) -> bool:
            return self._dials_home_code(digits, strip_outside_line)

        # Callers' and trunk legs' numbers never carry the outside-line prefix.
        # A dialled number may, also before a number in E.164 form (9+44...).
        outside = self.outside_line_prefix if strip_outside_line else ""
        dial = parse_dial_string(dialled, self.country_code, self.national_prefix,
                                 home_lead, outside)
        if dial.plus:
            return self._after_plus(dialled, dial.digits)

        digits = dial.digits
        if strip_outside_line:
            digits = self._without_dial_prefixes(dialled, digits, dial.outside_line)
        elif strip_call_prefix:
            digits = self._without_call_prefix(digits)

        international_prefix_length = self._home.international_prefix_length(digits)
        if international_prefix_length:
            return self._after_international_prefix(
                dialled, digits[international_prefix_length:]
            )

        if self.national_prefix and digits.startswith(self.national_prefix):
            return self._national(dialled, digits)

        if len(digits) <= self.short_code_max_length:
            return self._short_code(dialled, digits)

        if not self.national_prefix or self._home.national_prefix_optional(digits):
            return self._national(dialled, digits)

        raise InvalidNumber(
            f"dialled number {quote(dialled)} is neither a short code (at most "
            f"{self.short_code_max_length} digits) nor a national number starting with "
            f"{self.national_prefix!r}; dial the national prefix and area code, "
            "or '+' and the country code"
        )

    def _without_dial_prefixes(self, dialled: str, digits: str,
                               outside_line: bool = True) -> str:
        """Return the dialled ``digits`` without the outside-line prefix and a
        prefix for one call: a caller-ID prefix such as 141 or a text relay
        prefix such as 18001 in GB.

        The prefix for one call may follow the outside-line prefix, but not
        precede it, because the dialplan strips the outside-line prefix only
        at the start. The trunk gets ``141 9 0212 123 4567`` as dialled, and a
        carrier that drops the 141 reads the rest as +90 212 123 4567. A
        prefix for one call is removed
        before the national or international prefix and more digits, so
        ``14101632960123`` is ``01632960123``. A caller-ID prefix is also
        removed before a short code that follows it directly, when the whole
        is too long for a short code, so ``141116123`` is ``116123``, but
        ``1411`` and ``141101`` stay as dialled and are read as short codes. A
        text relay prefix never is, so that ``18001999`` is not read as a voice
        call to 999. A leading outside-line prefix is removed only when
        ``outside_line`` is set, that is when ``dialled`` starts with it.
        """
        if outside_line:
            digits = self._without_outside_line(dialled, digits)
        return self._without_call_prefix(digits)

    def _without_call_prefix(self, digits: str) -> str:
        """Return ``digits`` without a leading caller-ID or text relay prefix,
        when the national prefix and more digits follow. After a caller-ID
        prefix, return the short code that follows it directly when
        ``digits`` are too long for one.

        An outside-line prefix after the prefix for one call stays, because
        the dialplan strips it only at the start. The trunk gets ``1470 9
        116123`` as dialled, which a trunk leg reads as +1 470 911 6123.
        """
        for call_prefix in self._call_prefixes:
            if not digits.startswith(call_prefix):
                continue
            rest = digits[len(call_prefix):]
            prefix = self.national_prefix
            if prefix and rest.startswith(prefix) and len(rest) > len(prefix):
                return rest
            if (call_prefix in self._caller_id_prefixes
                    and len(digits) > self.short_code_max_length
                    and self._fits_short_code(rest)):
                return rest
        return digits

    def _fits_short_code(self, digits: str) -> bool:
        """Check whether ``digits`` have a short code's length and no national prefix."""
        if self.national_prefix and digits.startswith(self.national_prefix):
            return False
        return self._home.short_code_min_length <= len(digits) <= self.short_code_max_length

    def _without_outside_line(self, dialled: str, digits: str) -> str:
        prefix = self.outside_line_prefix
        if not prefix or not digits.startswith(prefix):
            return digits
        digits = digits[len(prefix) :]
        if not digits:
            raise InvalidNumber(
                f"dialled number {quote(dialled)} contains only the "
                f"outside-line prefix {prefix!r}"
            )
        return digits

    def _dials_home_code(self, digits: str, strip_outside_line: bool) -> bool:
        """Check whether ``digits`` are the international prefix and the home code.

        ``0044 (0) 20 7946 0000`` is written like ``+44 (0) 20 7946 0000``, so
        the ``(0)`` after it is the national prefix too, also after the
        outside-line prefix or a caller-ID or text relay prefix.
        """
        if strip_outside_line and digits != self.outside_line_prefix:
            stripped = self._without_dial_prefixes(digits, digits)
            if stripped != digits and self._dials_home_code(stripped, False):
                return True
        length = self._home.international_prefix_length(digits)
        return bool(length) and digits[length:] == str(self.country_code)

    def _after_plus(self, dialled: str, digits: str) -> Number:
        international_prefix_length = self._home.international_prefix_length(digits)
        if international_prefix_length:
            raise InvalidNumber(
                f"dialled number {quote(dialled)} has the international prefix "
                f"{digits[:international_prefix_length]!r} after '+'; "
                "write either '+' or the international prefix, not both"
            )

        return self._international(dialled, digits)

    def _after_international_prefix(self, dialled: str, digits: str) -> Number:
        if not digits:
            raise InvalidNumber(
                f"dialled number {quote(dialled)} contains only an international prefix"
            )

        return self._international(dialled, digits)

    def _international(self, dialled: str, digits: str) -> Number:
        if digits.startswith("0"):
            raise InvalidNumber(
                f"dialled number {quote(dialled)} has no country code, "
                "because no country code starts with 0"
            )

        # The quick reading keeps every dialled digit, so only phonenumbers'
        # reading can be a rewrite.
        parsed = parse_international(digits)
        if parsed is None:
            parsed = self._parse(dialled, PLUS + digits, None)
            problem = rewrite_problem(digits, parsed)
            if problem is not None:
                raise InvalidNumber(f"dialled number {quote(dialled)} {problem}")

        return self._build(dialled, parsed)

    def _national(self, dialled: str, digits: str) -> Number:
        parsed = parse_national(digits, self.home_country)
        if parsed is not None:
            # parse_national() matched the number against the general pattern
            # of the home country's main region, one of those that
            # leading_digits_problem() tries, so the number has no such problem.
            return self._build(dialled, parsed, leading_digits_checked=True)
        parsed = self._parse(dialled, digits, self.home_country)
        if parsed.country_code != self.country_code:
            raise InvalidNumber(
                f"dialled number {quote(dialled)} was read as country code "
                f"+{parsed.country_code}, not the home country code "
                f"+{self.country_code}"
            )

        return self._build(dialled, parsed)

    def _short_code(self, dialled: str, digits: str) -> Number:
        if len(digits) < self._home.short_code_min_length:
            raise InvalidNumber(
                f"dialled number {quote(dialled)} is too short, because short codes "
                f"in {self.home_country} have at least "
                f"{self._home.short_code_min_length} digits"
            )

        return Number(
            dialled=dialled,
            e164="",
            national=digits,
            country_code=self.country_code,
            region=self.home_country,
            short_code=True,
        )

    def _parse(self, dialled: str, text: str, region: str | None) -> PhoneNumber:
        try:
            parsed = phonenumbers.parse(text, region)
        except NumberParseException as exc:
            problem = _PARSE_PROBLEMS.get(exc.error_type, "is not a phone number")
            raise InvalidNumber(f"dialled number {quote(dialled)} {problem}") from None

        problem = length_problem(parsed)
        if problem is None and kept_national_prefix(parsed):
            # phonenumbers keeps a leading 0 that it cannot strip without making
            # the rest too short, so "0163296" would become "+440163296".
            stripped = PhoneNumber(
                country_code=parsed.country_code, national_number=parsed.national_number
            )
            problem = (
                length_problem(stripped) or "has a national prefix in the wrong place"
            )

        if problem is not None:
            raise InvalidNumber(f"dialled number {quote(dialled)} {problem}")

        return parsed

    def _build(self, dialled: str, parsed: PhoneNumber, *,
               leading_digits_checked: bool = False) -> Number:
        nsn = phonenumbers.national_significant_number(parsed)
        if not leading_digits_checked:
            problem = leading_digits_problem(parsed, nsn)
            if problem is not None:
                raise InvalidNumber(f"dialled number {quote(dialled)} {problem}")

        country_code = parsed.country_code
        national = ""
        if country_code == self.country_code:
            national = self.national_prefix + nsn

        return Number(
            dialled=dialled,
            # The text of format_number(parsed, E164), which differs only for
            # a national number of 0 with raw input: no number read here.
            e164=f"{PLUS}{country_code}{nsn}",
            national=national,
            country_code=country_code,
            find_region=_region_of,
            short_code=False,
            parsed=parsed,
        )

    def is_premium_rate(self, number: Number) -> bool:
        """Check whether phonenumbers' ranges put ``number`` in a premium rate range.

        Prefix tables name the home country's premium ranges, but rarely every
        other country's, so this catches them for numbers the table calls plain
        international. A number of no known type that starts with a whole
        premium rate number counts too (+49 900 1234567 8), because the
        carrier gets every dialled digit and a network may route the call on
        the leading ones.
        """
        if not number.e164:
            return False
        parsed = number.parsed
        if parsed is None:
            parsed = phonenumbers.parse(number.e164, None)
        # A number whose type is premium rate fits the premium rate pattern of
        # its region, so it also starts with a premium rate number. Most
        # numbers do not, and for them phonenumbers' type, which tries every
        # range of the region in turn, is not needed.
        # NOTE: a number shorter than a premium rate number of its range is
        # not caught, because Python's re cannot tell whether more digits
        # would complete a match.
        if not starts_with_premium_rate(parsed, number.region):
            return False
        number_type = phonenumbers.number_type(parsed)
        return number_type in (PhoneNumberType.PREMIUM_RATE, PhoneNumberType.UNKNOWN)

    def _parse_caller_leniently(self, text: str) -> str | None:
        if not set(text) <= _CALLER_CHARACTERS:
            return None

        try:
            parsed = phonenumbers.parse(text, self.home_country)
        except NumberParseException:
            return None

        if length_problem(parsed) is not None or kept_national_prefix(parsed):
            return None

        return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)

    def read_destination(self, dialled: str) -> str:
        """Return a trunk leg's number in a form that ``normalise`` reads as the
        carrier does.

        The dialplan dials the trunk without the outside-line prefix, so a leg's
        number never carries it: ``902121234567`` is Istanbul in E.164 without
        ``+``, not 0212 123 4567 after a prefix of 9. A number that starts with
        the prefix is therefore returned in E.164 form. Many carriers take
        numbers in E.164 form without ``+`` or an international prefix
        (``441632960000``, ``33142685300``). Such a number is returned in E.164
        form when it has a possible length for its country code. A caller-ID
        or text relay prefix before a valid home number (``141 0800 1111`` or
        ``18001 0800 1111`` in GB) is dropped, as the check drops it, and the
        number is returned in E.164 form. Every other
        string is returned unchanged: numbers read the same either way,
        emergency numbers and strings that are no number in either reading.
        Invalid input is returned, not raised.
        """
        if not isinstance(dialled, str) or self.emergency(dialled) is not None:
            return dialled

        digits = remove_separators(dialled.strip())
        try:
            number = self._normalise(dialled, strip_outside_line=False)
        except InvalidNumber:
            number = None
        if number is not None:
            prefix = self.outside_line_prefix
            prefixed = bool(prefix) and digits.startswith(prefix)
            return number.e164 if prefixed and number.e164 else dialled

        if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
            return dialled

        after_prefix = None
        if digits.startswith(self._call_prefixes):
            after_prefix = self._home_number_after_call_prefix(dialled)
        if after_prefix is not None:
            # The check reads 141 0800 1111 as 0800 1111, so the leg must too,
            # though +1 410 800 1111 is a valid NANP number as well.
            return after_prefix

        try:
            parsed = phonenumbers.parse(PLUS + digits, None)
        except NumberParseException:
            return dialled

        if length_problem(parsed) is not None or kept_national_prefix(parsed):
            return dialled

        e164 = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
        try:
            self.normalise(e164)
        except InvalidNumber:
            return dialled

        return e164

    def _home_number_after_call_prefix(self, dialled: str) -> str | None:
        """Return the E.164 form of the valid home number after a caller-ID or
        text relay prefix in ``dialled``, or None.

        A number that has only a possible length gives None, so that a leg to
        +1 410 555 1234 in E.164 form without ``+`` is not read as 0555 1234.
        """
        try:
            number = self._normalise(dialled, strip_outside_line=False,
                                     strip_call_prefix=True)
        except InvalidNumber:
            return None
        if not number.e164 or number.country_code != self.country_code:
            return None
        if not phonenumbers.is_valid_number(phonenumbers.parse(number.e164, None)):
            return None
        return number.e164


def _region_of(parsed: PhoneNumber) -> str:
    """Return the region of a parsed number, or "" when phonenumbers has none for it."""
    region = phonenumbers.region_code_for_number(parsed)
    if region is None:
        # Numbers in unallocated ranges have no region of their own, so they get
        # the main region of their country code.
        region = phonenumbers.region_code_for_country_code(parsed.country_code)
    if region == UNKNOWN_REGION:
        region = ""
    return region
