"""Settings that load but probably do not do what the sysadmin meant."""

import bisect
import fnmatch
from ipaddress import ip_address, ip_network

from callguard.config.model import Config, NumberOverride, TrunkConfig
from callguard.config.offenders import KEY_ACCOUNTCODE, KEY_ENDPOINT
from callguard.config.plan_advice import number_plan_warnings
from callguard.numbers import PrefixTable
from callguard.policy.budget import MAX_SECONDS_CEILING


def config_warnings(config: Config, prefixes: PrefixTable | None = None) -> list[str]:
    """Return one line per setting that is valid but likely a mistake.

    ``prefixes`` is the prefix table already loaded for ``config``; without it
    the table is loaded here.
    """
    warnings = []
    for name, trunk in config.trunks.items():
        daily, weekly = trunk.daily_limit, trunk.weekly_limit
        if daily is not None and weekly is not None and daily > weekly:
            warnings.append(
                f"[trunk {name}] daily_limit {daily} is above weekly_limit {weekly}, "
                "so the weekly limit bites first; lower daily_limit or raise "
                "weekly_limit"
            )
        for key, limit in (("daily_limit", daily), ("weekly_limit", weekly)):
            if limit is not None and limit == 0:
                warnings.append(
                    f"[trunk {name}] {key} is 0: every call is refused except "
                    "emergency calls and opted-out callers; leave it empty for no "
                    "limit"
                )
        warnings.extend(_outside_trunk_numbers(name, trunk, config))
        warnings.extend(_notify_without_mail(name, trunk, config))
        warnings.extend(_addresses_in_ban_ignore(name, trunk))
        limited = [key for key, value in (("daily_limit", daily), ("weekly_limit", weekly),
                                          ("max_concurrent_calls", trunk.max_concurrent_calls))
                   if value is not None]
        pattern = trunk.channel_pattern or ""
        technology, slash, endpoint = pattern.partition("/")
        unmatchable = _unmatchable_channel_pattern(name, pattern)
        if unmatchable:
            warnings.append(unmatchable)
        elif pattern and (not pattern.strip("*?") or slash and not endpoint.strip("*?")):
            warnings.append(
                f"[trunk {name}] channel_pattern {pattern!r} matches every channel"
                f"{'' if not endpoint else ' of ' + technology}, phones' included, so "
                "their calls are metered as this trunk's, and hung up when their number is "
                "barred or no number at all, as an extension is; name "
                f"the trunk's endpoint, such as PJSIP/{name}-*"
            )
        if config.ari.enabled and limited and not trunk.channel_pattern:
            warnings.append(
                f"[trunk {name}] channel_pattern is empty, so callguard cannot tell this "
                f"trunk's channels: {', '.join(limited)} "
                f"{'applies' if len(limited) == 1 else 'apply'} only to reservations, and "
                "calls are not metered or hung up; set channel_pattern to the trunk's "
                f"channel names, such as PJSIP/{name}-*"
            )
        if trunk.max_call_seconds is not None and trunk.max_call_seconds > MAX_SECONDS_CEILING:
            warnings.append(
                f"[trunk {name}] max_call_seconds is {trunk.max_call_seconds} s, but "
                f"callguard never gives a call more than {MAX_SECONDS_CEILING} s (24 h); "
                "write 24h or less"
            )
    if not config.ari.enabled:
        limited = sorted(name for name, trunk in config.trunks.items()
                         if trunk.daily_limit is not None or trunk.weekly_limit is not None)
        if limited:
            warnings.append(
                f"[ari] enabled = no, so the daily and weekly limits of "
                f"{', '.join(f'[trunk {name}]' for name in limited)} count only the first "
                "block each allowed call reserves, and only for reservation_seconds: "
                "calls are not metered or hung up; set enabled = yes in [ari]"
            )
        capped = sorted(name for name, trunk in config.trunks.items()
                        if trunk.max_concurrent_calls is not None)
        if capped:
            warnings.append(
                f"[ari] enabled = no, so max_concurrent_calls of "
                f"{', '.join(f'[trunk {name}]' for name in capped)} counts each allowed "
                "call for reservation_seconds after its check, not while it lasts; "
                "set enabled = yes in [ari]"
            )
    warnings.extend(_shadowed_channel_patterns(config))
    warnings.extend(_open_fastagi(config))
    warnings.extend(_unreachable_fastagi(config))
    warnings.extend(_overlapping_overrides(config))
    warnings.extend(number_plan_warnings(config, prefixes))
    return warnings


def _shadowed_channel_patterns(config: Config) -> list[str]:
    """Return a warning for each trunk whose channels an earlier trunk's pattern takes.

    The metering gives a channel to the first trunk in file order whose
    channel_pattern matches it.
    """
    # NOTE: a later pattern counts as shadowed when the earlier pattern matches
    # its text, which holds for copies and for a '*' that covers a longer prefix.
    # Overlaps that only some channel names share, such as PJSIP/g* and
    # PJSIP/*a-*, are not detected.
    warnings = []
    earlier: list[tuple[str, str]] = []
    for name, trunk in config.trunks.items():
        pattern = trunk.channel_pattern or ""
        if not pattern:
            continue

        for first_name, first_pattern in earlier:
            if fnmatch.fnmatchcase(pattern, first_pattern):
                warnings.append(
                    f"[trunk {name}] channel_pattern {pattern!r} falls within "
                    f"[trunk {first_name}]'s {first_pattern!r}, which comes first in the "
                    "file. callguard assigns each channel to the first trunk whose "
                    f"pattern matches it, so {name}'s calls are metered and hung up by "
                    f"{first_name}'s limits, and {name}'s limits never apply; give each "
                    "trunk a pattern that matches only its own channels, such as "
                    f"PJSIP/{name}-*"
                )
                break
        earlier.append((name, pattern))
    return warnings


def _unmatchable_channel_pattern(name: str, pattern: str) -> str | None:
    """Return the warning for a channel_pattern that no channel name matches, if any.

    Asterisk names a channel TECHNOLOGY/RESOURCE-NUMBER, such as
    PJSIP/gamma-00000001, and technologies are letters and digits.
    """
    if not pattern:
        return None

    fix = (f"channel names are the technology, '/' and the channel, such as "
           f"PJSIP/{name}-00000001; write it like PJSIP/{name}-*")
    if any(character.isspace() for character in pattern):
        return (f"[trunk {name}] channel_pattern {pattern!r} contains whitespace, which "
                "channel names do not contain, so it matches no channel; remove the "
                f"whitespace, and start a comment with ';', as in PJSIP/{name}-* ; outbound")

    wildcard = _first_wildcard(pattern)
    if wildcard is None and "/" not in pattern:
        return (f"[trunk {name}] channel_pattern {pattern!r} has no '/' and no '*', so "
                f"it matches no channel: {fix}")
    if wildcard is None:
        return (f"[trunk {name}] channel_pattern {pattern!r} has no wildcard, so it "
                "matches only the channel of exactly that name, but Asterisk adds a "
                f"number to each channel's name, such as PJSIP/{name}-00000001; write "
                f"it like PJSIP/{name}-*")

    # The text before the first wildcard must be the start of a technology, or
    # a technology and '/'.
    literal_start = pattern[:wildcard]
    technology = literal_start.partition("/")[0]
    if technology and not technology.isalnum():
        return (f"[trunk {name}] channel_pattern {pattern!r} does not begin with the "
                f"technology and '/' or with a wildcard, so it matches no channel: {fix}")
    return None


def _first_wildcard(pattern: str) -> int | None:
    """Return the index of the first wildcard of ``pattern``, or None.

    fnmatch reads a '[' without a later ']' as a plain character.
    """
    for index, character in enumerate(pattern):
        if character in "*?":
            return index
        if character == "[" and "]" in pattern[index + 2:]:
            return index
    return None


def _open_fastagi(config: Config) -> list[str]:
    """Warn when any host that reaches a non-loopback fastagi_listen may send checks.

    A check names its channel and caller itself, so such a host can hold
    first blocks, use up the velocity limits and get phones blocked as
    offenders.
    """
    general = config.general
    if _is_loopback(general.fastagi_host):
        return []
    open_networks = [str(network) for network in general.allowed_clients
                     if network.prefixlen == 0]
    if not open_networks:
        return []
    return [
        f"[general] allowed_clients contains {', '.join(open_networks)} and fastagi_listen "
        f"is {general.fastagi_host}, so any host that reaches port {general.fastagi_port} "
        "can send checks, hold budget and get phones blocked as offenders; list only the "
        "addresses of the Asterisk servers"
    ]


# The address from which a client on this host connects to a loopback
# address of each IP version. Linux takes it from the local route, so a
# connection to 127.0.0.2 comes from 127.0.0.1 too. Only a client that binds
# its own address differs, and an agi:// URL has no way to name one.
LOOPBACK_SOURCES = {4: ip_address("127.0.0.1"), 6: ip_address("::1")}


def _unreachable_fastagi(config: Config) -> list[str]:
    """Warn when allowed_clients rejects the clients that can reach a loopback
    fastagi_listen.

    The server rejects every other source, so each check then ends in the
    dialplan's fail policy.
    """
    general = config.general
    listen = ip_address(general.fastagi_host)
    if not listen.is_loopback:
        return []
    source = LOOPBACK_SOURCES[listen.version]
    if any(network.version == source.version and source in network
           for network in general.allowed_clients):
        return []
    return [
        f"[general] fastagi_listen is {general.fastagi_host}, which takes connections "
        f"from this host alone, but allowed_clients does not contain {source}, the "
        "address that Asterisk on this host connects from, so every check is rejected "
        "and the dialplan applies its fail policy; add "
        f"{source}/{source.max_prefixlen} to allowed_clients"
    ]


def _is_loopback(host: str) -> bool:
    # parse_listen_address accepts IP addresses only.
    return ip_address(host).is_loopback


# Pairs of overlapping [number ...] sections named one by one; more are counted.
MAX_LISTED_OVERLAPS = 10


def _overlapping_overrides(config: Config) -> list[str]:
    """Warn about [number ...] sections that cover the same callers on a trunk.

    Their allow and bar lists then apply together, which is easy to miss when
    one number is written in two forms, such as 01632960012 and +441632960012.
    It runs at every start and reload, so the listing and the count take
    O(n log n) time in the number of sections, even when thousands of
    sections all overlap.
    """
    overrides = config.overrides
    listed = _first_overlaps(overrides, MAX_LISTED_OVERLAPS)
    warnings = []
    for (first, second), (low, high) in listed.items():
        shared = f"+{low}" if low == high else f"+{low}-+{high}"
        warnings.append(
            f"{_describe_override(overrides[first])} and "
            f"{_describe_override(overrides[second])} both cover {shared}, so their "
            "allow and bar lists apply together to those callers; merge them into one "
            "section"
        )
    if len(listed) == MAX_LISTED_OVERLAPS:
        more = _count_overlaps(overrides) - MAX_LISTED_OVERLAPS
        if more > 0:
            warnings.append(f"{more} more pairs of [number ...] sections overlap")
    return warnings


def _describe_override(override: NumberOverride) -> str:
    """Name a [number ...] section as the file writes it, with its line."""
    if override.line:
        return f"[{override.header}] on line {override.line}"
    return f"the [number ...] section for {override.numbers}"


def _first_overlaps(overrides: list[NumberOverride],
                    limit: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Return up to ``limit`` overlapping pairs of sections, by the low end of
    their shared range, each with the first range that both cover.

    The ranges are swept in order of their low ends. Each trunk, and None for
    sections without one, keeps the ranges still open. A range with a trunk
    is compared with the open ranges of its trunk and of None, and a range
    without one with all. An open range that has not ended overlaps the range
    being swept, so each comparison finds a pair or drops an ended range, and
    the sweep stops at ``limit`` pairs.
    """
    ranges = sorted((low, high, index) for index, override in enumerate(overrides)
                    for low, high in override.numbers.ranges)
    pairs: dict[tuple[int, int], tuple[int, int]] = {}
    open_ranges: dict[str | None, list[tuple[int, int]]] = {}
    for low, high, index in ranges:
        trunk = overrides[index].trunk
        scopes = list(open_ranges) if trunk is None else [trunk, None]
        for scope in scopes:
            still_open = [item for item in open_ranges.get(scope, []) if item[0] >= low]
            for other_high, other in still_open:
                if other != index:
                    pair = (min(other, index), max(other, index))
                    pairs.setdefault(pair, (low, min(high, other_high)))
                if len(pairs) == limit:
                    return pairs
            if still_open:
                open_ranges[scope] = still_open
            else:
                open_ranges.pop(scope, None)
        open_ranges.setdefault(trunk, []).append((high, index))
    return pairs


def _count_overlaps(overrides: list[NumberOverride]) -> int:
    """Return how many pairs of sections overlap on some trunk.

    Ranges are counted in pairs, which equal pairs of sections because each
    [number ...] section contains one number or range.
    """
    by_trunk: dict[str | None, list[tuple[int, int]]] = {}
    for override in overrides:
        by_trunk.setdefault(override.trunk, []).extend(override.numbers.ranges)

    every_trunk = by_trunk.pop(None, [])
    lows = sorted(low for low, _ in every_trunk)
    highs = sorted(high for _, high in every_trunk)
    total = _count_overlaps_within(every_trunk)
    for ranges in by_trunk.values():
        total += _count_overlaps_within(ranges)
        for low, high in ranges:
            # A range without a trunk misses this one when it ends below its
            # low end or starts above its high end.
            missed = bisect.bisect_left(highs, low) + len(lows) - bisect.bisect_right(lows, high)
            total += len(every_trunk) - missed
    return total


def _count_overlaps_within(ranges: list[tuple[int, int]]) -> int:
    """Return how many pairs of ``ranges`` share a number."""
    highs = sorted(high for _, high in ranges)
    # Of two ranges that share no number, exactly one ends below the other's low end.
    apart = sum(bisect.bisect_left(highs, low) for low, _ in ranges)
    return len(ranges) * (len(ranges) - 1) // 2 - apart


def _addresses_in_ban_ignore(name: str, trunk: TrunkConfig) -> list[str]:
    """Return a warning for ban_ignore entries that are addresses on a trunk that
    counts offenders by name, or nothing."""
    settings = trunk.offenders
    if settings.key_type not in (KEY_ENDPOINT, KEY_ACCOUNTCODE):
        return []
    addresses = [item for item in sorted(settings.ban_ignore.names) if _is_network(item)]
    if not addresses:
        return []
    listed = ", ".join(repr(address) for address in addresses)
    return [
        f"[trunk {name}] ban_ignore lists {listed}, an IP address or network, but "
        f"offender_key is {settings.key_type}, so it is compared with "
        f"{settings.key_type} names and exempts nothing; set offender_key = source to "
        "exempt addresses, or list the names"
    ]


def _is_network(text: str) -> bool:
    try:
        ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _notify_without_mail(name: str, trunk: TrunkConfig, config: Config) -> list[str]:
    """Warn about a trunk's notify addresses that no alert e-mail can reach."""
    if not trunk.notify or config.smtp is not None:
        return []

    addresses = ", ".join(trunk.notify)
    if config.webhook is None:
        return [
            f"[trunk {name}] notify = {addresses}, but this trunk's alerts go nowhere "
            "until [smtp] host or [webhook] url is set, and each is dropped with a "
            "warning in the log; set host, from and to in [smtp], or url in [webhook]"
        ]
    return [
        f"[trunk {name}] notify = {addresses}, but [smtp] host is not set, so this "
        "trunk's alerts go only to the webhook and never to these addresses; set "
        "host, from and to in [smtp], or remove notify"
    ]


def _outside_trunk_numbers(name: str, trunk: TrunkConfig, config: Config) -> list[str]:
    """Warn about opt-outs, opt-ins and number sections beyond the trunk's numbers.

    Such a range matches only callers that present a number the trunk does not
    list, which is usually a typo in one of the two lists.
    """
    if not trunk.numbers:
        return []
    lists = [("opt_out", trunk.opt_out), ("opt_in", trunk.opt_in)]
    lists += [(f"[number ...] section for {override.numbers}", override.numbers)
              for override in config.overrides if override.trunk == name]
    warnings = []
    for label, ranges in lists:
        stray = ranges.outside(trunk.numbers)
        if stray:
            warnings.append(
                f"[trunk {name}] {label}: {stray} is not among the trunk's numbers "
                f"({trunk.numbers}), so it matches only callers that present a number "
                "the trunk does not list; "
                "correct the number or add it to numbers"
            )
    return warnings
