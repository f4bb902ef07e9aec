"""The normalised form of a dialled number."""

from collections.abc import Callable

from phonenumbers import PhoneNumber

from callguard.rating.fields import SHORT_CODE_MARK

E164_PLUS = "+"


class Number:
    """A dialled number in E.164 and national form.

    ``e164`` is empty for a short code, which has no E.164 form. ``national`` is
    the home country's national form, including the national prefix
    (``01632960000``) or the short code as dialled (``118118``). It is empty for
    numbers of other country codes. ``region`` is the phonenumbers region code
    (``GB``, ``IM``, ``001`` for non-geographic entities, empty when unknown).

    A number is immutable. Its region may be given as ``find_region``, a function
    called with ``parsed`` on first use: for a country code that several regions
    share (``+44``, ``+1``), finding it means matching the number against each
    region's ranges, and most decisions never read it. The function takes
    ``parsed`` as its argument instead of binding it, because a cached number
    with a bound function would be two more objects for every young garbage
    collection to walk.

    ``parsed`` is phonenumbers' ``PhoneNumber`` for the number, kept so that a
    later check of its ranges does not parse ``e164`` again. It is None for
    short codes and wherever the number was built without one. Equality and
    hashing leave it out, because it follows from ``e164``.
    """

    __slots__ = ("dialled", "e164", "national", "country_code", "short_code",
                 "_region", "_find_region", "parsed")

    dialled: str
    e164: str
    national: str
    country_code: int
    short_code: bool

    def __init__(
        self,
        *,
        dialled: str,
        e164: str,
        national: str,
        country_code: int,
        short_code: bool,
        region: str | None = None,
        find_region: Callable[[PhoneNumber | None], str] | None = None,
        parsed: PhoneNumber | None = None,
    ):
        if (region is None) == (find_region is None):
            raise TypeError("Number() needs exactly one of region and find_region")
        # Every check builds one, so the slots are set one by one, without a loop.
        set_slot = object.__setattr__
        set_slot(self, "dialled", dialled)
        set_slot(self, "e164", e164)
        set_slot(self, "national", national)
        set_slot(self, "country_code", country_code)
        set_slot(self, "short_code", short_code)
        set_slot(self, "_region", region)
        set_slot(self, "_find_region", find_region)
        set_slot(self, "parsed", parsed)

    @property
    def region(self) -> str:
        if self._region is None:
            object.__setattr__(self, "_region", self._find_region(self.parsed))
            object.__setattr__(self, "_find_region", None)
        return self._region

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Number is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Number is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple:
        return (self.dialled, self.e164, self.national, self.country_code, self.region,
                self.short_code)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Number):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Number(dialled={self.dialled!r}, e164={self.e164!r}, "
                f"national={self.national!r}, country_code={self.country_code!r}, "
                f"region={self.region!r}, short_code={self.short_code!r})")

    @property
    def rating_key(self) -> str:
        """Key for rate-deck lookup: E.164 digits, or ``short:`` and the short code.

        A short code gets its own form because country code and short code
        (44118118) would also be the start of real E.164 numbers (+44 118 ...).
        """
        if self.short_code:
            return f"{SHORT_CODE_MARK}{self.national}"

        return self.e164.removeprefix(E164_PLUS)

    @property
    def table_key(self) -> str:
        """Key for prefix-table lookup: national form at home, else E.164 form."""
        return self.national or self.e164
