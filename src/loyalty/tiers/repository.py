"""All SQL of the tier engine: ladder versions, member tiers, history, backtests and the
set-based scheduled re-assessment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from typing import cast as type_cast

from sqlalchemy import (
    DateTime,
    Integer,
    Table,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from loyalty import rules
from loyalty.facts.models import ActivitySettings
from loyalty.facts.repository import fact_columns, facts_from
from loyalty.members.models import Member
from loyalty.outbox.models import DomainEvent
from loyalty.programmes.models import Programme
from loyalty.tiers import core
from loyalty.tiers.definition import LadderSpec, TierRules, grace_end_at
from loyalty.tiers.models import MemberTier, MemberTierChange, TierLadderVersion

versions = type_cast(Table, TierLadderVersion.__table__)
tiers = type_cast(Table, MemberTier.__table__)
history_t = type_cast(Table, MemberTierChange.__table__)
events = type_cast(Table, DomainEvent.__table__)
members = type_cast(Table, Member.__table__)
TS = DateTime(timezone=True)
_VERSION_COLUMNS = (
    versions.c.version,
    versions.c.status,
    versions.c.note,
    versions.c.effective_at,
    versions.c.published_at,
    versions.c.created_at,
    versions.c.created_by,
    versions.c.definition,
)
# A member's tier row as the tier engine reads it (tiers.definition.state_for).
TIER_COLUMNS = (
    tiers.c.tier,
    tiers.c.rank,
    tiers.c.ladder_version,
    tiers.c.achieved_at,
    tiers.c.valid_until,
    tiers.c.grace_until,
    tiers.c.pin_kind,
    tiers.c.pin_tier,
    tiers.c.pin_until,
    tiers.c.pin_reason,
    tiers.c.next_assessment_at,
)


# --- programme and members -------------------------------------------------------------------


async def programme_timezone(conn: AsyncConnection, programme_id: int) -> str:
    tz = await conn.scalar(
        select(Programme.__table__.c.timezone).where(Programme.__table__.c.id == programme_id)
    )
    return tz or "UTC"


async def qualification_window(conn: AsyncConnection, programme_id: int) -> dict[str, Any]:
    a = ActivitySettings.__table__
    row = (
        await conn.execute(select(a.c.window_kind, a.c.window_months).where(a.c.programme_id == programme_id))
    ).first()
    if row is None:
        return {"kind": "rolling_months", "months": 12, "source": "activity_settings (default)"}
    return {"kind": row.window_kind, "months": row.window_months, "source": "activity_settings"}


async def member_id(conn: AsyncConnection, programme_id: int, external_id: str) -> int | None:
    return await conn.scalar(
        select(members.c.id).where(
            members.c.programme_id == programme_id, members.c.external_id == external_id
        )
    )


async def member_external_id(conn: AsyncConnection, programme_id: int, member_id: int) -> str | None:
    return await conn.scalar(
        select(members.c.external_id).where(members.c.programme_id == programme_id, members.c.id == member_id)
    )


# --- ladder versions -------------------------------------------------------------------------


async def create_version(
    conn: AsyncConnection, programme_id: int, definition: dict[str, Any], note: str, created_by: str
) -> dict[str, Any]:
    # Serialise version numbering per programme (a concurrent create waits, then takes the next).
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('tier_versions'), :p)"), {"p": programme_id}
    )
    number = await conn.scalar(
        select(func.coalesce(func.max(versions.c.version), 0) + 1).where(
            versions.c.programme_id == programme_id
        )
    )
    row = (
        await conn.execute(
            insert(versions)
            .values(
                programme_id=programme_id,
                version=number,
                definition=definition,
                note=note,
                created_by=created_by,
            )
            .returning(*_VERSION_COLUMNS)
        )
    ).one()
    return dict(row._mapping)


async def list_versions(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(*_VERSION_COLUMNS).where(versions.c.programme_id == programme_id).order_by(versions.c.version)
    )
    return [dict(r._mapping) for r in rows]


async def get_version(
    conn: AsyncConnection, programme_id: int, version: int, *, lock: bool = False
) -> dict[str, Any] | None:
    stmt = select(*_VERSION_COLUMNS).where(
        versions.c.programme_id == programme_id, versions.c.version == version
    )
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return dict(row._mapping) if row else None


async def current_version(conn: AsyncConnection, programme_id: int, now: datetime) -> dict[str, Any] | None:
    """The ladder in force at ``now``: the published (or since superseded) version with the
    latest effective_at not after now. A version published for a future date takes over then."""
    row = (
        await conn.execute(
            select(*_VERSION_COLUMNS)
            .where(
                versions.c.programme_id == programme_id,
                versions.c.status.in_(("published", "superseded")),
                versions.c.effective_at <= now,
            )
            .order_by(versions.c.effective_at.desc(), versions.c.version.desc())
            .limit(1)
        )
    ).first()
    return dict(row._mapping) if row else None


async def ladder_versions(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    """Every version that is or was in force, or will be: latest effective_at first (the order
    current_version picks by)."""
    rows = await conn.execute(
        select(versions.c.version, versions.c.effective_at, versions.c.definition)
        .where(versions.c.programme_id == programme_id, versions.c.status.in_(("published", "superseded")))
        .order_by(versions.c.effective_at.desc(), versions.c.version.desc())
    )
    return [dict(r._mapping) for r in rows]


async def latest_effective_at(conn: AsyncConnection, programme_id: int) -> datetime | None:
    return await conn.scalar(
        select(func.max(versions.c.effective_at)).where(
            versions.c.programme_id == programme_id, versions.c.status.in_(("published", "superseded"))
        )
    )


async def publish(
    conn: AsyncConnection, programme_id: int, version: int, effective_at: datetime, now: datetime
) -> None:
    await conn.execute(
        update(versions)
        .where(versions.c.programme_id == programme_id, versions.c.status == "published")
        .values(status="superseded")
    )
    await conn.execute(
        update(versions)
        .where(versions.c.programme_id == programme_id, versions.c.version == version)
        .values(status="published", effective_at=effective_at, published_at=now)
    )


async def update_draft(
    conn: AsyncConnection, programme_id: int, version: int, definition: dict[str, Any], note: str
) -> dict[str, Any] | None:
    """Replace a draft's definition and note; None when the version is not a draft (any more)."""
    row = (
        await conn.execute(
            update(versions)
            .where(
                versions.c.programme_id == programme_id,
                versions.c.version == version,
                versions.c.status == "draft",
            )
            .values(definition=definition, note=note)
            .returning(*_VERSION_COLUMNS)
        )
    ).first()
    return dict(row._mapping) if row else None


async def programmes_with_ladders(conn: AsyncConnection, now: datetime) -> list[int]:
    rows = await conn.execute(
        select(versions.c.programme_id)
        .where(versions.c.status.in_(("published", "superseded")), versions.c.effective_at <= now)
        .distinct()
    )
    return [r[0] for r in rows]


# --- member tiers ----------------------------------------------------------------------------


async def lock_member_tier(conn: AsyncConnection, programme_id: int, member_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*TIER_COLUMNS)
            .where(tiers.c.programme_id == programme_id, tiers.c.member_id == member_id)
            .with_for_update()
        )
    ).first()
    return dict(row._mapping) if row else None


async def lock_new_member(conn: AsyncConnection, programme_id: int, member_id: int) -> None:
    """Serialise the first assessments of a member who has no tier row yet (no row to lock)."""
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('member_tier:' || :p || ':' || :m, 0))"),
        {"p": str(programme_id), "m": str(member_id)},
    )


async def ensure_member_tier(
    conn: AsyncConnection, programme_id: int, member_id: int, *, tier: str, ladder_version: int, at: datetime
) -> None:
    """A row on the base tier ``tier`` for a member who has none (a row someone else inserted
    meanwhile wins): then there is a row to lock. An event's first promotion inserts its row
    only if none exists, so neither overwrites a decision made on a row it did not see."""
    await conn.execute(
        pg_insert(tiers)
        .values(
            programme_id=programme_id, member_id=member_id, tier=tier, rank=0, ladder_version=ladder_version,
            achieved_at=at,
        )
        .on_conflict_do_nothing(index_elements=[tiers.c.programme_id, tiers.c.member_id])
    )  # fmt: skip


async def get_member_tier(conn: AsyncConnection, programme_id: int, member_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(*TIER_COLUMNS).where(tiers.c.programme_id == programme_id, tiers.c.member_id == member_id)
        )
    ).first()
    return dict(row._mapping) if row else None


async def save_member_tier(conn: AsyncConnection, programme_id: int, member_id: int, **values: Any) -> None:
    stmt = pg_insert(tiers).values(programme_id=programme_id, member_id=member_id, **values)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[tiers.c.programme_id, tiers.c.member_id],
            # The insert's own updated_at (its default, now()): Citus takes no function call here.
            set_={**values, "updated_at": stmt.excluded.updated_at},
        )
    )


async def set_next_assessment(
    conn: AsyncConnection, programme_id: int, member_id: int, at: datetime | None
) -> None:
    await conn.execute(
        update(tiers)
        .where(tiers.c.programme_id == programme_id, tiers.c.member_id == member_id)
        .values(next_assessment_at=at)
    )


async def clear_pin(conn: AsyncConnection, programme_id: int, member_id: int) -> None:
    await conn.execute(
        update(tiers)
        .where(tiers.c.programme_id == programme_id, tiers.c.member_id == member_id)
        .values(pin_kind=None, pin_tier=None, pin_until=None, pin_reason=None, updated_at=func.now())
    )


async def add_history(conn: AsyncConnection, programme_id: int, member_id: int, **values: Any) -> None:
    await conn.execute(insert(history_t).values(programme_id=programme_id, member_id=member_id, **values))


async def history(
    conn: AsyncConnection, programme_id: int, member_id: int, limit: int
) -> list[dict[str, Any]]:
    h = history_t.c
    rows = await conn.execute(
        select(
            h.id, h.at, h.kind, h.reason, h.from_tier, h.to_tier, h.ladder_version, h.trace, h.facts, h.actor
        )
        .where(h.programme_id == programme_id, h.member_id == member_id)
        .order_by(h.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]


# --- set-based work --------------------------------------------------------------------------


def _ts(value: datetime | None) -> ColumnElement[Any]:
    return cast(literal(value, TS), TS) if value is not None else cast(null(), TS)


def _key(name: str) -> ColumnElement[Any]:
    # Keys of jsonb_build_object are our own identifiers (fact names, validated tier codes);
    # as SQL literals they need no parameter type, which jsonb_build_object("any") can't infer.
    if not all(ch.isalnum() or ch in "_-." for ch in name):
        raise ValueError(f"not a safe key: {name!r}")
    return literal_column(f"'{name}'", Text)


def _facts_json(columns: rules.FactColumns) -> ColumnElement[Any]:
    args: list[Any] = []
    for name, column in columns.columns.items():
        args.extend((_key(name), column))
    return func.jsonb_build_object(*args)


def _target_rank(spec: LadderSpec, entry: Mapping[str, ColumnElement[Any]]) -> ColumnElement[int]:
    """The rank of the highest tier whose entry rule holds (base: 0)."""
    whens = [(entry[t.tier.code], t.tier.rank) for t in reversed(spec.tiers[1:])]
    return case(*whens, else_=0) if whens else literal(0, Integer)


def _backtest_draft(programme_id: int, spec: LadderSpec, now: datetime) -> Any:
    """Every member with their current rank under the draft and the rank the draft gives them."""
    columns = fact_columns(now)
    entry = {t.tier.code: rules.to_sql(t.entry, columns) for t in spec.tiers[1:]}
    # The member's current rank under the draft: its tier's rank there (unknown tier = base).
    current_rank = case({t.tier.code: t.tier.rank for t in spec.tiers}, value=tiers.c.tier, else_=0)
    return (
        select(
            members.c.external_id.label("member_id"),
            func.coalesce(tiers.c.tier, spec.ladder.base.code).label("from_tier"),
            current_rank.label("from_rank"),
            _target_rank(spec, entry).label("to_rank"),
            _facts_json(columns).label("facts"),
        )
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id)
        .cte("draft")
    )


def backtest_statement(programme_id: int, spec: LadderSpec, now: datetime, sample: int) -> tuple[Any, Any]:
    """(counts by current rank -> draft rank, a sample of movers with their facts), both over
    every member of the programme; a member without a tier row is on the base tier."""
    draft = _backtest_draft(programme_id, spec, now)
    code_by_rank = case({t.tier.rank: t.tier.code for t in spec.tiers}, value=draft.c.to_rank)
    counts = select(
        func.count().label("members"),
        func.count().filter(draft.c.to_rank > draft.c.from_rank).label("up"),
        func.count().filter(draft.c.to_rank < draft.c.from_rank).label("down"),
        func.count().filter(draft.c.to_rank == draft.c.from_rank).label("stay"),
        func.coalesce(
            select(func.jsonb_object_agg(literal_column("t"), literal_column("n")))
            .select_from(
                select(code_by_rank.label("t"), func.count().label("n")).group_by(draft.c.to_rank).subquery()
            )
            .scalar_subquery(),
            cast(literal("{}"), JSONB),
        ).label("by_tier"),
    ).select_from(draft)
    movers = (
        select(draft.c.member_id, draft.c.from_tier, code_by_rank.label("to_tier"), draft.c.facts)
        .where(draft.c.to_rank != draft.c.from_rank)
        .order_by(draft.c.member_id)
        .limit(sample)
    )
    return counts, movers


def backtest_movers_statement(
    programme_id: int,
    spec: LadderSpec,
    now: datetime,
    *,
    direction: str | None,
    after: str | None,
    limit: int,
) -> Any:
    """One page of the members the draft would move (``direction`` "up", "down" or None for
    both), in member id order after ``after`` (keyset)."""
    draft = _backtest_draft(programme_id, spec, now)
    code_by_rank = case({t.tier.rank: t.tier.code for t in spec.tiers}, value=draft.c.to_rank)
    moved = {
        "up": draft.c.to_rank > draft.c.from_rank,
        "down": draft.c.to_rank < draft.c.from_rank,
    }.get(direction or "", draft.c.to_rank != draft.c.from_rank)
    stmt = (
        select(
            draft.c.member_id,
            draft.c.from_tier,
            code_by_rank.label("to_tier"),
            draft.c.facts,
        )
        .where(moved)
        .order_by(draft.c.member_id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(draft.c.member_id > after)
    return stmt


def scheduled_statement(
    *, programme_id: int, spec: LadderSpec, now: datetime, tz: str, batch: int, actor: str
) -> Any:
    """One statement that re-assesses up to ``batch`` due members (next_assessment_at <= now)
    the way core.decide(trigger="scheduled") does, and writes member_tiers, the history (the
    decision and any expired pin) and tier.changed events. Returns (member_id, external_id,
    kind, to_tier, written) of each member it assessed."""
    codes = [t.tier.code for t in spec.tiers]
    locked = (
        select(tiers.c.member_id)
        .where(
            tiers.c.programme_id == programme_id,
            tiers.c.next_assessment_at <= _ts(now),
            tiers.c.tier.in_(codes),
            or_(tiers.c.pin_kind.is_(None), tiers.c.pin_tier.in_(codes)),
        )
        .order_by(tiers.c.next_assessment_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
        .cte("locked")
    )
    return _assessment_statement(
        programme_id=programme_id,
        spec=spec,
        now=now,
        tz=tz,
        actor=actor,
        which=members.c.id.in_(select(locked.c.member_id)),
        scheduled=true(),
    )


async def slice_end(conn: AsyncConnection, programme_id: int, after: int, batch: int) -> int | None:
    """The last member id of the next keyset slice (ids after ``after``, at most ``batch``);
    None when there is none."""
    upto = await conn.scalar(
        select(func.max(literal_column("id"))).select_from(
            select(members.c.id)
            .where(members.c.programme_id == programme_id, members.c.id > after)
            .order_by(members.c.id)
            .limit(batch)
            .subquery()
        )
    )
    return None if upto is None else int(upto)


async def lock_slice(conn: AsyncConnection, programme_id: int, after: int, upto: int) -> None:
    """Lock the slice's member_tiers rows in id order. A statement of its own, so that the
    assessment statement, which starts once the locks are held, reads the rows as they are
    now (READ COMMITTED) rather than as they were before a concurrent event's commit."""
    await conn.execute(
        select(tiers.c.member_id)
        .where(tiers.c.programme_id == programme_id, tiers.c.member_id > after, tiers.c.member_id <= upto)
        .order_by(tiers.c.member_id)
        .with_for_update()
    )


def reassess_statement(
    *, programme_id: int, spec: LadderSpec, now: datetime, tz: str, after: int, upto: int, actor: str
) -> Any:
    """One statement that re-assesses every member with ``after < id <= upto`` against
    ``spec``: a member who is due (next_assessment_at <= now) as the scheduled job does, every
    other member as an event does (promotion only). A member without a member_tiers row gets
    one. Only rows whose state changes are written."""
    now_sql = _ts(now)
    return _assessment_statement(
        programme_id=programme_id,
        spec=spec,
        now=now,
        tz=tz,
        actor=actor,
        which=and_(members.c.id > after, members.c.id <= upto),
        scheduled=func.coalesce(tiers.c.next_assessment_at <= now_sql, false()),
    )


@dataclass(frozen=True, slots=True)
class _LadderAt:
    """The ladder as of ``now``, as constants: every date core computes here starts from
    ``now`` (a reached tier's validity, a grace), so they are per-tier values computed in Python
    with core's own calendar functions; the SQL only picks among them."""

    spec: LadderSpec
    upper: tuple[TierRules, ...]  # every tier above the base, in rank order
    codes: list[str]
    base_code: str
    rank_of: dict[str, int]
    validity_end: dict[int, datetime | None]  # by the rank reached now
    grace_end: dict[str, datetime]  # by tier code, for the tiers that have a grace

    @classmethod
    def of(cls, spec: LadderSpec, now: datetime, tz: str) -> _LadderAt:
        return cls(
            spec=spec,
            upper=spec.tiers[1:],
            codes=[t.tier.code for t in spec.tiers],
            base_code=spec.ladder.base.code,
            rank_of={t.tier.code: t.tier.rank for t in spec.tiers},
            validity_end={t.tier.rank: core.validity_end(t.tier, now, tz=tz) for t in spec.tiers},
            grace_end={
                t.tier.code: grace_end_at(now, t.tier.grace_days, tz)
                for t in spec.tiers
                if t.tier.grace_days > 0
            },
        )

    def validity_end_of(self, rank: ColumnElement[Any]) -> ColumnElement[Any]:
        return case({k: _ts(v) for k, v in self.validity_end.items()}, value=rank)

    def code_of(self, rank: ColumnElement[Any]) -> ColumnElement[Any]:
        return case({k: code for code, k in self.rank_of.items()}, value=rank)


def _assessment_statement(
    *,
    programme_id: int,
    spec: LadderSpec,
    now: datetime,
    tz: str,
    actor: str,
    which: ColumnElement[bool],
    scheduled: ColumnElement[bool],
) -> Any:
    """The set-based core.decide over the members ``which`` selects from facts_from(), with
    trigger "scheduled" where ``scheduled`` holds and "event" elsewhere.

    One statement of CTEs, each a step of core.decide: ``base`` (the stored row and the rules'
    verdicts), ``by_rules`` (the step the rules alone take), ``decided`` (pins applied: the new
    tier, its dates, kind and reason), then the writes: member_tiers (``updated``,
    ``inserted``), the history and tier.changed events of the rows written. The stored row is
    read as definition.state_for does: no row, or a tier the ladder no longer has, is the base
    tier; a pin on such a tier is no pin.
    """
    ladder = _LadderAt.of(spec, now, tz)
    now_sql = _ts(now)
    base = _assessment_base(programme_id, ladder, now, now_sql, which=which, scheduled=scheduled)
    by_rules = _assessment_by_rules(ladder, base.c, now_sql)
    decided = _assessment_decided(ladder, by_rules.c, now_sql)
    d = decided.c
    new_tier = ladder.code_of(d.new_rank)
    pid_sql = literal(programme_id)
    version_sql = literal(spec.version, Integer)
    updated, inserted = _member_tier_writes(
        d,
        new_tier,
        programme_id=programme_id,
        version=spec.version,
        now_sql=now_sql,
        pid_sql=pid_sql,
        version_sql=version_sql,
    )
    written = union_all(select(updated.c.member_id), select(inserted.c.member_id)).cte("written")
    is_written = d.member_id.in_(select(written.c.member_id))
    trigger_sql = case(
        (d.scheduled, literal_column("'scheduled'", Text)), else_=literal_column("'event'", Text)
    )
    history_rows = _assessment_history(
        ladder,
        d,
        new_tier,
        trigger_sql,
        is_written,
        actor=actor,
        now_sql=now_sql,
        pid_sql=pid_sql,
        version_sql=version_sql,
    )
    event_rows = _tier_changed_events(
        d, new_tier, trigger_sql, is_written, now_sql=now_sql, pid_sql=pid_sql, version_sql=version_sql
    )
    return (
        select(d.member_id, d.external_id, d.kind, new_tier.label("to_tier"), is_written.label("written"))
        .select_from(decided)
        .add_cte(updated, inserted, written, history_rows, event_rows)
    )


def _assessment_base(
    programme_id: int,
    ladder: _LadderAt,
    now: datetime,
    now_sql: ColumnElement[Any],
    *,
    which: ColumnElement[bool],
    scheduled: ColumnElement[bool],
) -> Any:
    """CTE ``base``: each member's stored tier row read as state_for does, every upper tier's
    entry (e_i) and retention (r_i) verdict over the facts, and the facts as JSON."""
    columns = fact_columns(now)
    in_ladder = func.coalesce(tiers.c.tier.in_(ladder.codes), false())
    pin_ok = func.coalesce(tiers.c.pin_tier.in_(ladder.codes), false())

    def if_in(condition: ColumnElement[bool], column: Any, type_: Any) -> ColumnElement[Any]:
        return case((condition, column), else_=cast(null(), type_))

    return (
        select(
            members.c.id.label("member_id"),
            members.c.external_id,
            tiers.c.member_id.is_not(None).label("had_row"),
            scheduled.label("scheduled"),
            case((in_ladder, tiers.c.tier), else_=literal(ladder.base_code, Text)).label("tier"),
            func.coalesce(tiers.c.achieved_at, now_sql).label("achieved_at"),
            if_in(in_ladder, tiers.c.valid_until, TS).label("valid_until"),
            if_in(in_ladder, tiers.c.grace_until, TS).label("grace_until"),
            if_in(pin_ok, tiers.c.pin_kind, Text).label("pin_kind"),
            if_in(pin_ok, tiers.c.pin_tier, Text).label("pin_tier"),
            if_in(pin_ok, tiers.c.pin_until, TS).label("pin_until"),
            if_in(pin_ok, tiers.c.pin_reason, Text).label("pin_reason"),
            # The row as stored, to write only what changes.
            tiers.c.tier.label("old_tier"),
            tiers.c.rank.label("old_rank"),
            tiers.c.achieved_at.label("old_achieved_at"),
            tiers.c.valid_until.label("old_valid_until"),
            tiers.c.grace_until.label("old_grace_until"),
            tiers.c.pin_kind.label("old_pin_kind"),
            tiers.c.pin_tier.label("old_pin_tier"),
            tiers.c.pin_until.label("old_pin_until"),
            tiers.c.pin_reason.label("old_pin_reason"),
            tiers.c.next_assessment_at.label("old_next"),
            *(rules.to_sql(t.entry, columns).label(f"e_{i}") for i, t in enumerate(ladder.upper)),
            *(rules.to_sql(t.retention, columns).label(f"r_{i}") for i, t in enumerate(ladder.upper)),
            _facts_json(columns).label("facts"),
        )
        .select_from(facts_from())
        .where(members.c.programme_id == programme_id, which)
        .cte("base")
    )


def _assessment_by_rules(ladder: _LadderAt, b: Any, now_sql: ColumnElement[Any]) -> Any:
    """CTE ``by_rules``: the step the rules alone take (promoted, no_change, retained,
    grace_started, in_grace, demoted), with the current, target and landing ranks."""
    e = {t.tier.code: b[f"e_{i}"] for i, t in enumerate(ladder.upper)}
    r = {t.tier.code: b[f"r_{i}"] for i, t in enumerate(ladder.upper)}

    def by_tier(mapping: dict[str, Any], else_: Any) -> ColumnElement[Any]:
        # A one-tier ladder has no upper tiers, hence an empty mapping: the default alone must
        # still be a SQL expression (it is labelled and compared below).
        if not mapping:
            return else_ if isinstance(else_, ColumnElement) else literal(else_, Integer)
        return case(mapping, value=b.tier, else_=else_)

    cur_rank = case(ladder.rank_of, value=b.tier)
    cur_entry = by_tier(dict(e), true())
    cur_retention = by_tier(dict(r), true())
    target = _target_rank(ladder.spec, e)
    landing: dict[str, Any] = {}
    for index, t in enumerate(ladder.upper, start=1):
        below = ladder.spec.tiers[:index]
        if t.tier.downgrade_policy == "one_step":
            landing[t.tier.code] = below[-1].tier.rank
        else:
            whens = [(or_(e[x.tier.code], r[x.tier.code]), x.tier.rank) for x in reversed(below[1:])]
            landing[t.tier.code] = case(*whens, else_=0) if whens else 0
    landing_rank = by_tier(landing, 0)
    step = case(
        (target > cur_rank, "promoted"),
        # An event only ever promotes; a validity that has not passed leaves nothing due.
        (or_(~b.scheduled, b.valid_until.is_(None), now_sql < b.valid_until), "no_change"),
        (or_(cur_retention, cur_entry), "retained"),
        (and_(b.grace_until.is_(None), b.tier.in_(list(ladder.grace_end))), "grace_started"),
        (and_(b.grace_until.is_not(None), now_sql < b.grace_until), "in_grace"),
        else_="demoted",
    )
    return select(
        *b,
        cur_rank.label("cur_rank"),
        target.label("target_rank"),
        landing_rank.label("landing_rank"),
        cur_retention.label("cur_retention"),
        step.label("step"),
    ).cte("by_rules")


def _assessment_decided(ladder: _LadderAt, x: Any, now_sql: ColumnElement[Any]) -> Any:
    """CTE ``decided``: the rules' step with the pins applied (a fixed pin, or a floor the step
    would fall below): the new rank, its dates, the kind and reason, and who decided it."""
    vend_of = ladder.validity_end_of
    r_kind = case({"no_change": "unchanged", "in_grace": "unchanged"}, value=x.step, else_=x.step)
    r_reason = case(
        (x.step == "promoted", "entry_rule_met"),
        (x.step == "no_change", "no_change"),
        (x.step == "retained", case((x.cur_retention, "retention_rule_met"), else_="entry_rule_met")),
        (x.step == "grace_started", "validity_ended_grace"),
        (x.step == "in_grace", "in_grace"),
        else_=case((x.grace_until.is_not(None), "grace_ended"), else_="validity_ended"),
    )
    r_rank = case(
        (x.step == "promoted", x.target_rank), (x.step == "demoted", x.landing_rank), else_=x.cur_rank
    )
    r_achieved = case((x.step.in_(("promoted", "demoted")), now_sql), else_=x.achieved_at)
    r_valid = case(
        (x.step == "promoted", vend_of(x.target_rank)),
        (x.step == "retained", vend_of(x.cur_rank)),
        (x.step == "demoted", vend_of(x.landing_rank)),
        else_=x.valid_until,
    )
    grace_by_tier = {code: _ts(at) for code, at in ladder.grace_end.items()}
    r_grace = case(
        (
            x.step == "grace_started",
            case(grace_by_tier, value=x.tier, else_=_ts(None)) if grace_by_tier else _ts(None),
        ),
        (x.step.in_(("no_change", "in_grace")), x.grace_until),
        else_=_ts(None),
    )
    pin_live = and_(x.pin_kind.is_not(None), or_(x.pin_until.is_(None), now_sql < x.pin_until))
    pin_expired = and_(x.pin_kind.is_not(None), x.pin_until.is_not(None), now_sql >= x.pin_until)
    pin_rank = case(ladder.rank_of, value=x.pin_tier, else_=0)
    fixed = and_(pin_live, x.pin_kind == "fixed")
    # An event never lowers a tier, not even for a fixed pin: the scheduled run will.
    pin_target = case(
        (and_(~x.scheduled, x.pin_kind == "fixed", pin_rank < x.cur_rank), x.cur_rank), else_=pin_rank
    )
    floor_hit = and_(
        pin_live,
        x.pin_kind == "floor",
        or_(r_rank < pin_rank, and_(x.step == "grace_started", x.cur_rank == pin_rank)),
    )
    pinned = or_(fixed, floor_hit)
    hold = and_(pinned, pin_target == x.cur_rank)
    decided_by = case(
        (pinned, x.pin_tier),
        (x.step == "promoted", ladder.code_of(x.target_rank)),
        (x.step == "no_change", cast(null(), Text)),
        else_=x.tier,
    )
    return select(
        x.member_id,
        x.external_id,
        x.had_row,
        x.scheduled,
        x.tier.label("from_tier"),
        x.pin_kind,
        x.pin_tier,
        x.pin_until,
        x.pin_reason,
        x.facts,
        *(c for c in x if c.name.startswith("old_")),
        *(x[f"e_{i}"] for i in range(len(ladder.upper))),
        *(x[f"r_{i}"] for i in range(len(ladder.upper))),
        case((pinned, "pinned"), else_=r_kind).label("kind"),
        case((fixed, "pin_fixed"), (floor_hit, "pin_floor"), else_=r_reason).label("reason"),
        case((pinned, pin_target), else_=r_rank).label("new_rank"),
        case((hold, x.achieved_at), (pinned, now_sql), else_=r_achieved).label("achieved_at"),
        case(
            (hold, x.valid_until), (pinned, func.least(x.pin_until, vend_of(pin_target))), else_=r_valid
        ).label("valid_until"),
        case((hold, x.grace_until), (pinned, _ts(None)), else_=r_grace).label("grace_until"),
        decided_by.label("decided_by"),
        pin_live.label("pin_live"),
        pin_expired.label("pin_expired"),
    ).cte("decided")


def _member_tier_writes(
    d: Any,
    new_tier: ColumnElement[Any],
    *,
    programme_id: int,
    version: int,
    now_sql: ColumnElement[Any],
    pid_sql: ColumnElement[Any],
    version_sql: ColumnElement[Any],
) -> tuple[Any, Any]:
    """CTEs ``updated`` and ``inserted``: the member_tiers rows whose state changes, and the
    rows of members who had none. Each returns the member ids it wrote."""

    def future(moment: ColumnElement[Any], when: ColumnElement[bool] | None = None) -> ColumnElement[Any]:
        condition = moment > now_sql if when is None else and_(when, moment > now_sql)
        return case((condition, moment), else_=_ts(None))

    keep_pin = ~d.pin_expired
    values: dict[str, Any] = {
        "tier": new_tier,
        "rank": d.new_rank,
        "achieved_at": d.achieved_at,
        "valid_until": d.valid_until,
        "grace_until": d.grace_until,
        "pin_kind": case((keep_pin, d.pin_kind), else_=cast(null(), Text)),
        "pin_tier": case((keep_pin, d.pin_tier), else_=cast(null(), Text)),
        "pin_until": case((keep_pin, d.pin_until), else_=_ts(None)),
        "pin_reason": case((keep_pin, d.pin_reason), else_=cast(null(), Text)),
        "next_assessment_at": func.least(
            future(d.valid_until), future(d.grace_until), future(d.pin_until, d.pin_live)
        ),
    }
    old = {
        "tier": d.old_tier,
        "rank": d.old_rank,
        "achieved_at": d.old_achieved_at,
        "valid_until": d.old_valid_until,
        "grace_until": d.old_grace_until,
        "pin_kind": d.old_pin_kind,
        "pin_tier": d.old_pin_tier,
        "pin_until": d.old_pin_until,
        "pin_reason": d.old_pin_reason,
        "next_assessment_at": d.old_next,
    }
    # As service.assess_member: a row is written when its state changes (the ladder version
    # alone does not count), so a full re-evaluation leaves settled members untouched.
    changed = or_(*(values[k].is_distinct_from(old[k]) for k in values))
    updated = (
        update(tiers)
        .where(
            tiers.c.programme_id == programme_id,
            tiers.c.member_id == d.member_id,
            d.had_row,
            changed,
        )
        .values(**values, ladder_version=version, updated_at=now_sql)
        .returning(tiers.c.member_id)
        .cte("updated")
    )
    inserted = (
        pg_insert(tiers)
        .from_select(
            ["programme_id", "member_id", "ladder_version", "updated_at", *values],
            select(pid_sql, d.member_id, version_sql, now_sql, *values.values()).where(~d.had_row),
        )
        # A member an event assessed meanwhile keeps that (newer) decision.
        .on_conflict_do_nothing(index_elements=[tiers.c.programme_id, tiers.c.member_id])
        .returning(tiers.c.member_id)
        .cte("inserted")
    )
    return updated, inserted


def _assessment_history(
    ladder: _LadderAt,
    d: Any,
    new_tier: ColumnElement[Any],
    trigger_sql: ColumnElement[Any],
    is_written: ColumnElement[bool],
    *,
    actor: str,
    now_sql: ColumnElement[Any],
    pid_sql: ColumnElement[Any],
    version_sql: ColumnElement[Any],
) -> Any:
    """CTE ``history_rows``: of the members written, an expired pin and the decision (when it is
    a change), each with its trace (trigger, rules met, pin) and the facts it was made on."""
    rule_bits = func.jsonb_build_object(
        *(
            arg
            for i, t in enumerate(ladder.upper)
            for arg in (
                _key(t.tier.code),
                func.jsonb_build_object(_key("entry"), d[f"e_{i}"], _key("retention"), d[f"r_{i}"]),
            )
        )
    )
    pin_json = case(
        (
            d.pin_kind.is_not(None),
            func.jsonb_build_object(
                _key("kind"),
                d.pin_kind,
                _key("tier"),
                d.pin_tier,
                _key("until"),
                d.pin_until,
                _key("reason"),
                d.pin_reason,
            ),
        ),
        else_=cast(null(), JSONB),
    )
    trace = func.jsonb_build_object(
        _key("trigger"),
        trigger_sql,
        _key("kind"),
        d.kind,
        _key("reason"),
        d.reason,
        _key("decided_by_tier"),
        d.decided_by,
        _key("rules_met"),
        rule_bits,
        _key("pin"),
        pin_json,
        _key("pin_expired"),
        d.pin_expired,
        _key("at"),
        now_sql,
    )
    history_columns = [
        "programme_id",
        "member_id",
        "at",
        "kind",
        "reason",
        "from_tier",
        "to_tier",
        "ladder_version",
        "trace",
        "facts",
        "actor",
    ]
    actor_sql = literal(actor, Text)
    expired_rows = select(
        pid_sql,
        d.member_id,
        now_sql,
        literal("pin_expired", Text),
        literal("pin_expired", Text),
        d.from_tier,
        d.from_tier,
        version_sql,
        trace,
        d.facts,
        actor_sql,
    ).where(d.pin_expired, is_written)
    decision_rows = select(
        pid_sql,
        d.member_id,
        now_sql,
        d.kind,
        d.reason,
        d.from_tier,
        new_tier,
        version_sql,
        trace,
        d.facts,
        actor_sql,
    ).where(
        # As service._history_worthy: a pin that merely holds the current tier is no change.
        d.kind != "unchanged",
        or_(d.kind != "pinned", d.from_tier != new_tier),
        is_written,
    )
    return (
        insert(history_t)
        .from_select(history_columns, union_all(expired_rows, decision_rows))
        .returning(history_t.c.id)
        .cte("history_rows")
    )


def _tier_changed_events(
    d: Any,
    new_tier: ColumnElement[Any],
    trigger_sql: ColumnElement[Any],
    is_written: ColumnElement[bool],
    *,
    now_sql: ColumnElement[Any],
    pid_sql: ColumnElement[Any],
    version_sql: ColumnElement[Any],
) -> Any:
    """CTE ``event_rows``: a tier.changed outbox event for each member written whose tier moved."""
    payload = func.jsonb_build_object(
        _key("member_id"),
        d.external_id,
        _key("from_tier"),
        d.from_tier,
        _key("to_tier"),
        new_tier,
        _key("kind"),
        d.kind,
        _key("reason"),
        d.reason,
        _key("ladder_version"),
        version_sql,
        _key("trigger"),
        trigger_sql,
        _key("at"),
        now_sql,
    )
    return (
        insert(events)
        .from_select(
            ["programme_id", "type", "subject", "payload"],
            select(
                pid_sql, literal("tier.changed", Text), literal("member:", Text) + d.external_id, payload
            ).where(d.from_tier != new_tier, is_written),
        )
        .returning(events.c.id)
        .cte("event_rows")
    )


async def run_scheduled(conn: AsyncConnection, statement: Any) -> Sequence[Any]:
    return (await conn.execute(statement)).all()


async def due_outside_ladder(
    conn: AsyncConnection, programme_id: int, spec: LadderSpec, now: datetime, limit: int
) -> list[int]:
    """Due members whose tier or pin the ladder no longer has: left to the per-member path."""
    codes = [t.tier.code for t in spec.tiers]
    rows = await conn.execute(
        select(tiers.c.member_id)
        .where(
            tiers.c.programme_id == programme_id,
            tiers.c.next_assessment_at <= now,
            or_(
                tiers.c.tier.not_in(codes),
                and_(tiers.c.pin_kind.is_not(None), tiers.c.pin_tier.not_in(codes)),
            ),
        )
        .limit(limit)
    )
    return [r[0] for r in rows]


async def count_members(conn: AsyncConnection, programme_id: int) -> int:
    return int(await conn.scalar(select(func.count()).where(members.c.programme_id == programme_id)) or 0)
