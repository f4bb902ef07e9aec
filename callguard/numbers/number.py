"""The normalised form of a dialled number."""

from dataclasses import dataclass

E164_PLUS = "+"


@dataclass(frozen=True, slots=True)
class Number:
    """A dialled number in E.164 and national form.

    ``e164`` is empty for a short code, which has no E.164 form. ``national`` is
    the home country's national form, including the national prefix
    (``01632960000``) or the short code as dialled (``118118``). It is empty for
    numbers of other country codes. ``region`` is the phonenumbers region code
    (``GB``, ``IM``, ``001`` for non-geographic entities, empty when unknown).
    """

    dialled: str
    e164: str
    national: str
    country_code: int
    region: str
    short_code: bool

    @property
    def rating_key(self) -> str:
        """Digits for rate-deck lookup: E.164 digits, or country code + short code."""
        if self.short_code:
            return f"{self.country_code}{self.national}"

        return self.e164.removeprefix(E164_PLUS)

    @property
    def table_key(self) -> str:
        """Key for prefix-table lookup: national form at home, else E.164 form."""
        return self.national or self.e164
