"""The pure logic of benefits: parameters by type, quota periods, which source wins, and the
checkout decision. No I/O here: the service feeds it rows and the clock."""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from loyalty.errors import InvalidInput

Period = Literal["day", "week", "month", "year"]
PERIODS: Final[tuple[str, ...]] = ("day", "week", "month", "year")
SourceKind = Literal["grant", "segment", "tier", "upgrade"]
# When two sources are equally good, the more specific one is shown: a grant, then a campaign,
# then the member's own tier, and only then what an upgrade brings.
_PRECEDENCE: Final[dict[str, int]] = {"grant": 0, "segment": 1, "tier": 2, "upgrade": 3}
Announcement = Literal["announce", "wait", "skip"]


# Parameters ------------------------------------------------------------------------------


def _int(params: Mapping[str, Any], name: str, path: str, *, low: int, high: int | None = None) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{path}.{name}", "expected an integer")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{path}.{name}", f"must be {bound}")
    return value


def check_params(kind: str, params: Mapping[str, Any], path: str = "params") -> dict[str, Any]:
    """The effective parameters of a benefit of this type, validated; a 400 names the field.

    flag: {} | quota: {limit, period} | discount: {percent, cap?} or {amount} |
    multiplier: {factor: "1.5"} | gift: {points, budget, period?} | upgrade: {tier}
    """
    out = dict(params)
    if kind == "quota":
        _int(params, "limit", path, low=1)
        if params.get("period") not in PERIODS:
            raise InvalidInput(f"{path}.period", f"must be one of {', '.join(PERIODS)}")
    elif kind == "discount":
        if "percent" in params:
            _int(params, "percent", path, low=1, high=100)
            if params.get("cap") is not None:
                _int(params, "cap", path, low=1)
            if "amount" in params:
                raise InvalidInput(f"{path}.amount", "give either percent (with a cap) or amount")
        else:
            _int(params, "amount", path, low=1)
    elif kind == "multiplier":
        multiplier_of(params, path)
        out["factor"] = str(Decimal(str(params["factor"])))
    elif kind == "gift":
        _int(params, "points", path, low=1)
        if not isinstance(params.get("budget"), str) or not params["budget"]:
            raise InvalidInput(f"{path}.budget", "the budget code the points are paid from")
        if params.get("period", "year") not in PERIODS:
            raise InvalidInput(f"{path}.period", f"must be one of {', '.join(PERIODS)}")
    elif kind == "upgrade" and (not isinstance(params.get("tier"), str) or not params["tier"]):
        raise InvalidInput(f"{path}.tier", "the tier code the member is treated as")
    return out


def multiplier_of(params: Mapping[str, Any], path: str = "params") -> Fraction:
    raw = params.get("factor")
    try:
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise InvalidOperation
        value = Fraction(Decimal(str(raw)))
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{path}.factor", 'expected a decimal string such as "1.5"') from None
    if not Fraction(1) <= value <= Fraction(10):
        raise InvalidInput(f"{path}.factor", "must be between 1 and 10")
    return value


def merged(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults, **override}


# Periods ---------------------------------------------------------------------------------


def period_bounds(period: str, now: datetime, tz: str) -> tuple[date, datetime]:
    """The local date the current period started and the instant it resets (UTC-aware)."""
    zone = ZoneInfo(tz)
    today = now.astimezone(zone).date()
    if period == "day":
        start, end = today, today + timedelta(days=1)
    elif period == "week":  # ISO weeks: Monday to Sunday
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = today.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    elif period == "year":
        start, end = date(today.year, 1, 1), date(today.year + 1, 1, 1)
    else:
        raise ValueError(period)
    # Local midnight in the programme's zone, given in UTC like every other instant of the API.
    return start, datetime.combine(end, time(), zone).astimezone(UTC)


# Sources and decisions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    ref: str  # tier code, campaign code or grant id; for "upgrade" the upgrade benefit's code
    params: dict[str, Any]
    until: datetime | None = None
    # "upgrade" only: the tier whose benefit it is, and the source giving the member the upgrade.
    tier: str | None = None
    via: Source | None = None


def strength(kind: str, params: Mapping[str, Any]) -> Fraction:
    """How good one source's parameters are, to pick the best of several."""
    if kind == "quota":
        return Fraction(int(params.get("limit", 0)))
    if kind == "multiplier":
        return multiplier_of(params)
    if kind == "discount":
        return Fraction(int(params.get("percent", 0)) * 1_000_000 + int(params.get("amount", 0)))
    if kind == "gift":
        return Fraction(int(params.get("points", 0)))
    return Fraction(0)


def best_source(
    kind: str, sources: Sequence[Source], defaults: Mapping[str, Any] | None = None
) -> Source | None:
    """The source with the best parameters (a source's own over the benefit's ``defaults``)."""
    if not sources:
        return None
    base = defaults or {}
    return min(
        sources,
        key=lambda s: (-strength(kind, merged(base, s.params)), _PRECEDENCE[s.kind], s.ref, s.tier or ""),
    )


@dataclass(frozen=True, slots=True)
class BenefitDef:
    id: int
    code: str
    type: str
    params: dict[str, Any]
    channels: tuple[str, ...] = ()
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    active: bool = True
    names: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    source: Source | None = None
    params: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    period_start: date | None = None
    resets_at: datetime | None = None


def availability(benefit: BenefitDef, now: datetime, channel: str | None) -> str | None:
    """Why the benefit cannot be used by anyone right now, or None."""
    if not benefit.active:
        return "benefit_inactive"
    if benefit.valid_from is not None and now < benefit.valid_from:
        return "not_yet_valid"
    if benefit.valid_until is not None and now >= benefit.valid_until:
        return "benefit_expired"
    if channel is not None and benefit.channels and channel not in benefit.channels:
        return "channel_not_allowed"
    return None


def decide(
    benefit: BenefitDef,
    sources: Sequence[Source],
    *,
    used: int,
    now: datetime,
    tz: str,
    channel: str | None,
) -> Decision:
    """May the member use the benefit now? ``used`` counts used + reserved uses this period."""
    refused = availability(benefit, now, channel)
    if refused is not None:
        return Decision(False, refused)
    source = best_source(benefit.type, sources, benefit.params)
    if source is None:
        return Decision(False, "not_entitled")
    params = merged(benefit.params, source.params)
    if benefit.type != "quota":
        return Decision(True, "entitled", source, params)
    limit = int(params["limit"])
    start, resets_at = period_bounds(str(params["period"]), now, tz)
    remaining = max(limit - used, 0)
    return Decision(
        remaining > 0,
        "entitled" if remaining > 0 else "quota_exhausted",
        source,
        params,
        limit=limit,
        used=used,
        remaining=remaining,
        period_start=start,
        resets_at=resets_at,
    )


def quota_period(benefit: BenefitDef, sources: Sequence[Source]) -> str | None:
    """The period of the quota a member's best source gives (the usage row is keyed by it)."""
    if benefit.type != "quota":
        return None
    source = best_source(benefit.type, sources, benefit.params)
    params = merged(benefit.params, source.params if source else {})
    return str(params["period"])


# Upgrades ------------------------------------------------------------------------------------
#
# An upgrade benefit ({"tier": T}) makes the member be treated as tier T while it is in force:
# every (non-upgrade) benefit T includes becomes a source of kind "upgrade" beside the member's
# own sources, and the best parameters win as usual, so nothing drops below what the member has.
# An upgrade counts only when T is on the ladder in force and ranks above the member's own
# tier; the upgrades T itself includes are not followed (no chains).


@dataclass(frozen=True, slots=True)
class Lift:
    """An upgrade in force that lifts the member to ``tier``."""

    tier: str
    upgrade: BenefitDef
    source: Source


def upgrade_tier(upgrade: BenefitDef, source: Source) -> str:
    """The tier an upgrade benefit treats the member as, given the source's override."""
    return str(merged(upgrade.params, source.params).get("tier") or "")


def member_rank(tier: str | None, stored_rank: int | None, ranks: Mapping[str, int]) -> int:
    """The member's rank on the ladder in force: no tier row is the base tier (0); a tier the
    ladder no longer has keeps the rank stored with it."""
    if tier is None:
        return 0
    return ranks.get(tier, stored_rank or 0)


def lifts(
    upgrades: Iterable[tuple[BenefitDef, Source]], *, rank: int, ranks: Mapping[str, int], now: datetime
) -> list[Lift]:
    """The member's upgrades that lift them: the upgrade benefit is active and valid now (its
    channels do not matter: it is never used at checkout itself), and its tier is on the ladder
    in force (``ranks``, code -> rank) above the member's own ``rank``."""
    out: list[Lift] = []
    for upgrade, source in upgrades:
        if upgrade.type != "upgrade" or availability(upgrade, now, None) is not None:
            continue
        tier = upgrade_tier(upgrade, source)
        if tier in ranks and ranks[tier] > rank:
            out.append(Lift(tier, upgrade, source))
    return out


def through_upgrades(
    benefit: BenefitDef, found: Sequence[Lift], includes: Mapping[str, Mapping[str, Any]]
) -> list[Source]:
    """The sources of ``benefit`` the member has through their upgrades; ``includes`` maps a
    tier code to the parameters that tier gives this benefit. An upgrade brings no upgrade."""
    if benefit.type == "upgrade":
        return []
    return [
        Source(
            "upgrade", lift.upgrade.code, dict(includes[lift.tier]), lift.source.until, lift.tier, lift.source
        )
        for lift in found
        if lift.tier in includes
    ]


# Campaign announcements ------------------------------------------------------------------


def announcement(benefit: BenefitDef, ends_at: datetime, now: datetime) -> Announcement:
    """What to do with a started campaign not announced yet: ``announce`` (write benefit.granted
    for its members, mark it), ``skip`` (mark it without events: it ended, or its benefit
    expired, so it gives nobody anything any more) or ``wait`` (its benefit is inactive or not
    valid yet: announce when it starts giving)."""
    if now >= ends_at:
        return "skip"
    reason = availability(benefit, now, None)
    if reason == "benefit_expired":
        return "skip"
    if reason is not None:
        return "wait"
    return "announce"


def birthday_due(birthday: Any, today: date) -> bool:
    """A CRM attribute ``birthday`` as "MM-DD" (or "YYYY-MM-DD"); 29 February counts on
    28 February in other years."""
    if not isinstance(birthday, str):
        return False
    text = birthday[-5:]
    try:
        month, day = int(text[:2]), int(text[3:])
    except ValueError:
        return False
    if text[2] != "-" or not 1 <= month <= 12:
        return False
    if month == 2 and day == 29 and not calendar.isleap(today.year):
        day = 28
    return (today.month, today.day) == (month, day)
