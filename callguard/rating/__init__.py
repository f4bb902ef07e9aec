"""Rating: rate decks, billing increments, the cost of a call and its inverse.

A trunk's RateDeck maps E.164 prefixes and ``short:`` prefixes of home short codes
to Tariffs, and the longest matching prefix of the number's kind wins. A Tariff
prices a call in blocks (see ``callguard.rating.tariff`` for the rounding rules)
and computes how long a budget lasts.
"""

from callguard.rating.deck import RateDeck
from callguard.rating.errors import RateDeckError
from callguard.rating.increments import Increments
from callguard.rating.tariff import Tariff

__all__ = ["Increments", "RateDeck", "RateDeckError", "Tariff"]
