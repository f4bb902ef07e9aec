"""Callguard's database: SQLAlchemy models, column types, records and the ``Store``."""

from callguard.store.engine import StoreError
from callguard.store.models import SCHEMA_VERSION, Base
from callguard.store.records import (
    CALL_STATES,
    DATASET_PREFIXES,
    DATASET_RATES,
    DECISION_RESULTS,
    HANGUP_OUTCOMES,
    OUTCOME_FAILED,
    OUTCOME_GONE,
    OUTCOME_REQUESTED,
    RESULT_ALLOW,
    RESULT_DENY,
    STATE_ENDED,
    STATE_RINGING,
    STATE_UP,
    WINDOW_DAY,
    WINDOW_WEEK,
    WINDOWS,
    BlockRecord,
    CallRecord,
    DecisionRecord,
    HangupRecord,
    ImportRecord,
)
from callguard.store.store import Store
from callguard.store.types import Money, UTCDateTime
from callguard.store.windows import check_window_key, day_key, week_key, window_keys

__all__ = [
    "CALL_STATES",
    "DATASET_PREFIXES",
    "DATASET_RATES",
    "DECISION_RESULTS",
    "HANGUP_OUTCOMES",
    "OUTCOME_FAILED",
    "OUTCOME_GONE",
    "OUTCOME_REQUESTED",
    "RESULT_ALLOW",
    "RESULT_DENY",
    "SCHEMA_VERSION",
    "STATE_ENDED",
    "STATE_RINGING",
    "STATE_UP",
    "WINDOWS",
    "WINDOW_DAY",
    "WINDOW_WEEK",
    "Base",
    "BlockRecord",
    "CallRecord",
    "DecisionRecord",
    "HangupRecord",
    "ImportRecord",
    "Money",
    "Store",
    "StoreError",
    "UTCDateTime",
    "check_window_key",
    "day_key",
    "week_key",
    "window_keys",
]
