"""The demo programme that `make serve` seeds into an empty database.

Everything goes through the same service functions the API calls (with a Principal and an
Idempotency-Key each), so the data is exactly what the API would have written. The engine stamps
every transaction with now(), so the "history" is recent; the members' signup dates in their
attributes tell the longer story.

The whole seed is one database transaction: either the demo is there completely, or not at all
(and `is_seeded` stays false, so the next `make serve` tries again).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import schemas as acts
from loyalty.activity import service as activity
from loyalty.auth.core import KEY_ROLES, Principal
from loyalty.auth.service import create_api_key
from loyalty.benefits import schemas as bs
from loyalty.benefits import service as benefits
from loyalty.benefits.schemas import BenefitType
from loyalty.console.passwords import generate_password
from loyalty.console.service import create_operator
from loyalty.db import create_engine
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.members import schemas as ms
from loyalty.members import service as members
from loyalty.programmes import repository as programmes
from loyalty.programmes.service import create_programme
from loyalty.segments import schemas as ss
from loyalty.segments import service as segments
from loyalty.settings import Settings
from loyalty.tiers import schemas as ts
from loyalty.tiers import service as tiers

CODE = "demo"
TIMEZONE = "Asia/Shanghai"
MEMBERS = 300
UNIT_COST_MICROS = 10_000  # 0.01 CNY per point
EXPIRY = ls.ExpiryIn(days=365, round_to="year")
RETURN_WINDOW_DAYS = 14

_BUDGETS = (
    # code, name, cap, per-member cap
    ("welcome", "Welcome bonus", 100_000, 500),
    ("orders", "Points on orders", 5_000_000, None),
    ("birthday", "Birthday gift", 20_000, 288),
)
_BENEFITS: tuple[tuple[str, BenefitType, dict[str, str], dict[str, Any]], ...] = (
    # code, type, names, params
    ("free-delivery", "quota", {"en": "Free delivery", "zh-CN": "免运费"}, {"limit": 3, "period": "month"}),
    ("priority", "flag", {"en": "Priority dispatch", "zh-CN": "优先发货"}, {}),
    ("gold-x15", "multiplier", {"en": "Gold earns x1.5", "zh-CN": "金卡1.5倍积分"}, {"factor": "1.5"}),
)
_SURNAMES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun", "Ma")
_GIVEN = ("Wei", "Fang", "Na", "Min", "Jing", "Lei", "Jun", "Yan", "Tao", "Ming", "Xin", "Hui", "Lin", "Yu")
_CITIES = (
    "Shanghai",
    "Beijing",
    "Shenzhen",
    "Guangzhou",
    "Hangzhou",
    "Chengdu",
    "Nanjing",
    "Wuhan",
    "Suzhou",
)
_CHANNELS = ("app", "wechat_mini_program", "store", "web", "tmall")


def keys_file(settings: Settings) -> Path:
    """Where the demo's API keys are written (one per role), readable by the owner only."""
    return settings.data_dir / "demo_keys.json"


async def is_seeded(settings: Settings) -> bool:
    engine = create_engine(_url(settings), pool_size=1)
    try:
        async with engine.connect() as conn:
            return await programmes.by_code(conn, CODE) is not None
    finally:
        await engine.dispose()


async def seed(settings: Settings) -> None:
    """Create the demo programme with keys, budgets, ~300 members and their history.

    A no-op when the programme exists already, so `loyalty demo` can be run twice.
    """
    engine = create_engine(_url(settings), pool_size=1)
    try:
        async with engine.begin() as conn:
            if await programmes.by_code(conn, CODE) is not None:
                return
            keys = await _seed(conn)
    finally:
        await engine.dispose()
    # Only after the commit: keys that were rolled back would be no use to anyone.
    _write_private_json(keys_file(settings), keys)


def _url(settings: Settings) -> str:
    if not settings.database_url:
        raise ValueError("the demo seed needs settings.database_url")
    return settings.database_url


# --- the seed ---------------------------------------------------------------------------------


@dataclass
class _Seeder:
    conn: AsyncConnection
    shop: Principal  # the ecommerce key: earns, spends, holds, refunds, transfers
    operator: Principal
    crm: Principal
    rng: random.Random
    ops: int = 0
    available: dict[str, int] = field(default_factory=dict)

    def key(self, *parts: object) -> str:
        self.ops += 1
        return "demo:" + ":".join(str(p) for p in parts)

    def _note(self, member_id: str, posted: Any) -> dict[str, Any]:
        body: dict[str, Any] = msgspec.json.decode(posted.body)
        if "balance" in body and "member_id" in body:
            self.available[member_id] = body["balance"]["available"]
        return body

    async def enrol(self, member_id: str, attributes: dict[str, Any]) -> None:
        req = ms.MemberCreate(member_id=member_id, attributes=attributes)
        await members.enrol(self.conn, self.crm, req, self.key("enrol", member_id))
        self.available[member_id] = 0

    async def earn(
        self, member_id: str, budget: str, points: int, reference: str, *, pending: bool = False
    ) -> None:
        req = ls.EarnRequest(
            member_id=member_id,
            budget=budget,
            points=points,
            reference=reference,
            pending_days=RETURN_WINDOW_DAYS if pending else None,
            expiry=EXPIRY,
        )
        self._note(member_id, await ledger.earn(self.conn, self.shop, req, self.key("earn", reference)))

    async def spend(self, member_id: str, points: int, reference: str) -> None:
        req = ls.SpendRequest(member_id=member_id, points=points, reference=reference)
        self._note(member_id, await ledger.spend(self.conn, self.shop, req, self.key("spend", reference)))

    async def checkout_with_hold(self, member_id: str, points: int, reference: str, *, capture: bool) -> None:
        req = ls.HoldRequest(member_id=member_id, points=points, reference=reference, timeout_seconds=900)
        hold = self._note(
            member_id, await ledger.hold(self.conn, self.shop, req, self.key("hold", reference))
        )
        if capture:
            # The basket shrank before payment: capture part, the rest goes back.
            taken = max(1, points - self.rng.choice((0, 0, points // 4)))
            posted = await ledger.capture(
                self.conn,
                self.shop,
                hold["hold_id"],
                ls.CaptureRequest(points=taken),
                self.key("capture", reference),
            )
        else:
            posted = await ledger.void(self.conn, self.shop, hold["hold_id"], self.key("void", reference))
        self._note(member_id, posted)

    async def refund(self, member_id: str, reference: str, points: int | None) -> None:
        req = ls.ClawbackRequest(
            member_id=member_id, reference=reference, points=points, reason="order refunded"
        )
        posted = await ledger.clawback(self.conn, self.shop, req, self.key("refund", reference))
        self._note(member_id, posted)

    async def adjust(self, member_id: str, points: int, reason: str) -> None:
        req = ls.AdjustRequest(
            member_id=member_id, points=points, reason=reason, expiry=EXPIRY if points > 0 else None
        )
        posted = await ledger.adjust(self.conn, self.operator, req, self.key("adjust", member_id, points))
        self._note(member_id, posted)

    async def transfer(self, from_id: str, to_id: str, points: int) -> None:
        req = ls.TransferRequest(
            from_member_id=from_id, to_member_id=to_id, points=points, reason="family pooling"
        )
        body = msgspec.json.decode(
            (await ledger.transfer(self.conn, self.shop, req, self.key("transfer", from_id, to_id))).body
        )
        self.available[from_id] = body["balance"]["available"]
        self.available[to_id] += points


# One console login per role, sharing one generated password (the keys file holds it).
CONSOLE_ROLES = ("admin", "support", "marketer", "analyst")


def operator_email(role: str) -> str:
    return f"{role}@demo.example"


async def _operators(conn: AsyncConnection) -> dict[str, Any]:
    password = generate_password()
    for role in CONSOLE_ROLES:
        await create_operator(
            conn, email=operator_email(role), programme_code=CODE, role=role, password=password, who="system"
        )
    return {
        "path": "/console",
        "email": operator_email("admin"),
        "password": password,
        "other_logins": [operator_email(role) for role in CONSOLE_ROLES[1:]],
    }


async def _seed(conn: AsyncConnection) -> dict[str, Any]:
    programme_id = await create_programme(
        conn,
        code=CODE,
        name="Demo Coffee & Co.",
        currency="CNY",
        timezone=TIMEZONE,
        clawback_policy="negative",
        allow_transfers=True,
    )
    keys: dict[str, str] = {}
    key_ids: dict[str, int] = {}
    for role in KEY_ROLES:
        key_ids[role], keys[role] = await create_api_key(
            conn, programme_id=programme_id, role=role, name=f"demo {role}"
        )

    def principal(role: str) -> Principal:
        return Principal(
            programme_id=programme_id,
            programme_code=CODE,
            role=role,  # type: ignore[arg-type]
            key_id=key_ids[role],
            timezone=TIMEZONE,
        )

    seeder = _Seeder(
        conn=conn,
        shop=principal("ecommerce"),
        operator=principal("operator"),
        crm=principal("crm"),
        rng=random.Random(2026),
    )
    for code, name, cap, per_member_cap in _BUDGETS:
        budget = ls.BudgetCreate(
            code=code,
            name=name,
            cap=cap,
            unit_cost_micros=UNIT_COST_MICROS,
            per_member_cap=per_member_cap,
            alert_thresholds=[80, 100],
        )
        await ledger.create_budget(conn, seeder.operator, budget, seeder.key("budget", code))

    member_ids = [f"m{n:04d}" for n in range(1, MEMBERS + 1)]
    for member_id in member_ids:
        await _member_history(seeder, member_id)
    await _operator_touches(seeder, member_ids)
    await _programme_rules(seeder)
    await _recent_orders(seeder, member_ids)
    console = await _operators(conn)
    return {
        "programme": CODE,
        "keys": keys,
        "console": console,
        "example_member_id": member_ids[0],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def _member_history(s: _Seeder, member_id: str) -> None:
    rng = s.rng
    signup = date.today() - timedelta(days=rng.randint(20, 400))
    await s.enrol(
        member_id,
        {
            "name": f"{rng.choice(_SURNAMES)} {rng.choice(_GIVEN)}",
            "city": rng.choice(_CITIES),
            "signup_channel": rng.choice(_CHANNELS),
            "signup_date": signup.isoformat(),
        },
    )
    await s.earn(member_id, "welcome", 200, f"welcome-{member_id}")

    orders = rng.randint(1, 7)
    vested_orders: list[tuple[str, int]] = []
    for n in range(1, orders + 1):
        reference = f"order-{member_id}-{n}"
        points = rng.randint(30, 1500)  # one point per CNY spent
        # The latest orders are still inside their return window.
        pending = n > orders - 2 and rng.random() < 0.4
        await s.earn(member_id, "orders", points, reference, pending=pending)
        if not pending:
            vested_orders.append((reference, points))
        available = s.available[member_id]
        if available >= 100 and rng.random() < 0.35:
            points_used = min(available, rng.randint(10, 200) * 10)
            await s.spend(member_id, points_used, f"checkout-{member_id}-{n}")

    if rng.random() < 0.12 and s.available[member_id] >= 50:
        points_held = min(s.available[member_id], rng.randint(5, 60) * 10)
        await s.checkout_with_hold(member_id, points_held, f"cart-{member_id}", capture=rng.random() < 0.6)
    if rng.random() < 0.15:
        await s.earn(member_id, "birthday", 188, f"birthday-{member_id}-{date.today().year}")
    if vested_orders and rng.random() < 0.06:
        reference, points = rng.choice(vested_orders)
        # Half the refunds are partial (one item of the order came back).
        await s.refund(member_id, reference, None if rng.random() < 0.5 else max(1, points // 3))


async def _operator_touches(s: _Seeder, member_ids: list[str]) -> None:
    await s.adjust(member_ids[6], 500, "goodwill: late delivery, ticket #4711")
    richest = max(member_ids, key=lambda m: s.available[m])
    await s.adjust(richest, -100, "correction: duplicate points for a store receipt")
    giver = max(member_ids[100:200], key=lambda m: s.available[m])
    if s.available[giver] > 0:
        receiver = member_ids[201] if giver != member_ids[201] else member_ids[202]
        await s.transfer(giver, receiver, max(1, s.available[giver] // 2))


async def _programme_rules(s: _Seeder) -> None:
    """What an operator sets up above the ledger: member measures, an earning rule, a tier
    ladder with benefits, and a marketing segment."""
    op = s.operator
    await activity.put_settings(
        s.conn,
        op,
        acts.ActivitySettingsIn(
            rfm={
                "recency_days": [14, 30, 90, 180],
                "frequency": [2, 4, 8, 16],
                "monetary": [20_000, 50_000, 100_000, 300_000],
            },
            lifecycle={"new_days": 30, "active_days": 60, "silent_days": 180},
        ),
    )
    await activity.create_rule(
        s.conn,
        op,
        acts.EarningRuleIn(
            code="orders-1-per-cny",
            name="1 point per CNY on orders",
            event_type="order_completed",
            formula={"kind": "per_unit", "points": 1, "per": 100},
            budget="orders",
            pending_days=RETURN_WINDOW_DAYS,
            expiry=EXPIRY,
        ),
    )
    version = await tiers.create_version(
        s.conn,
        op,
        ts.LadderCreate(
            note="demo ladder",
            tiers=[
                ts.TierIn(code="member", name="Member", rank=0),
                ts.TierIn(
                    code="silver",
                    name="Silver",
                    rank=1,
                    grace_days=30,
                    entry={"fact": "qualifying_points", "op": ">=", "value": 1_000},
                    retention={"fact": "qualifying_points", "op": ">=", "value": 600},
                    validity=ts.ValidityIn(months=12, round_to="month"),
                ),
                ts.TierIn(
                    code="gold",
                    name="Gold",
                    rank=2,
                    grace_days=30,
                    downgrade_policy="to_qualified",
                    entry={"fact": "qualifying_points", "op": ">=", "value": 3_000},
                    retention={"fact": "qualifying_points", "op": ">=", "value": 2_000},
                    validity=ts.ValidityIn(months=12, round_to="month"),
                ),
            ],
        ),  # fmt: skip
    )
    await tiers.publish(s.conn, op, version.version, ts.PublishRequest())
    for code, type_, names, params in _BENEFITS:
        create = bs.BenefitCreate(code=code, type=type_, names=names, params=params)
        await benefits.create(s.conn, op, create)
    for tier, included in (
        ("silver", ["free-delivery"]),
        ("gold", ["free-delivery", "priority", "gold-x15"]),
    ):
        items = [bs.TierBenefitItem(benefit=code) for code in included]
        await benefits.set_tier_benefits(s.conn, op, tier, bs.TierBenefitsSet(benefits=items))
    rule = {
        "all": [
            {"fact": "monetary_score", "op": ">=", "value": 4},
            {"fact": "lifecycle", "op": "==", "value": "silent"},
        ]
    }
    await segments.create(
        s.conn, op, ss.SegmentCreate(code="high-value-silent", name="High-value silent members", rule=rule)
    )


async def _recent_orders(s: _Seeder, member_ids: list[str]) -> None:
    """Orders of the last months as events: they earn by the rule, build each member's facts
    and promote members up the ladder as they go."""
    now = datetime.now(UTC)
    for member_id in member_ids:
        for n in range(s.rng.randint(0, 2)):
            event = acts.EventIn(
                event_id=f"demo-order-{member_id}-{n}",
                member_id=member_id,
                type="order_completed",
                occurred_at=now - timedelta(days=s.rng.randint(1, 200), minutes=n),
                order_ref=f"web-{member_id}-{n}",
                amount=s.rng.randint(30, 2_500) * 100,
                currency="CNY",
                channel=s.rng.choice(("app", "web", "store")),
            )
            await activity.record(s.conn, s.shop, event)


# --- the keys file ----------------------------------------------------------------------------


def _write_private_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle, indent=2)
        handle.write("\n")
    os.chmod(temporary, 0o600)  # O_CREAT's mode does not apply to a file that existed
    os.replace(temporary, path)
