"""Out-of-hours barring: categories a trunk bars outside its business hours."""

from datetime import datetime

from callguard.config import TrunkConfig
from callguard.policy.barring import expand


def is_barred_out_of_hours(category: str, trunk: TrunkConfig, now: datetime) -> bool:
    """Return True when ``category`` is barred on ``trunk`` at ``now`` (aware).

    Business hours are read on the wall clock of the trunk's time zone, so they
    follow its clock changes. Barring ``international`` bars the whole
    international family. Neither ``international_allow`` nor a number's
    ``allow`` lifts this barring, because it guards the hours when no one is
    watching the trunk.
    """
    if category not in expand(trunk.bar_out_of_hours):
        return False

    hours = trunk.business_hours
    if hours is None:
        # The config loader rejects bar_out_of_hours without business_hours.
        return True
    return not hours.is_open(now.astimezone(trunk.timezone))
