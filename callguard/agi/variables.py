"""Channel variables that the check reads from and sets on the calling channel."""

# Set by the check for the dialplan.
CALLGUARD_RESULT = "CALLGUARD_RESULT"
CALLGUARD_REASON = "CALLGUARD_REASON"
CALLGUARD_CATEGORY = "CALLGUARD_CATEGORY"
CALLGUARD_MAXSECS = "CALLGUARD_MAXSECS"
CALLGUARD_RATE = "CALLGUARD_RATE"
# Set only for an emergency call: the number to dial, such as 999 for 999#.
CALLGUARD_EMERGENCY = "CALLGUARD_EMERGENCY"

# Read by the check when the AGI arguments leave them out.
CALLGUARD_TRUNK = "CALLGUARD_TRUNK"
# The caller's address, e.g. ${CHANNEL(pjsip,remote_addr)}, for offender_key = source.
CALLGUARD_SOURCE = "CALLGUARD_SOURCE"

# The FastAGI script name of the call decision: agi://127.0.0.1:4573/check
SCRIPT_CHECK = "check"

# agi_callerid when the channel has no caller ID.
UNKNOWN_CALLER = "unknown"
