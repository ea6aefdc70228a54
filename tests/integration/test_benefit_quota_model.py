"""A stateful property: random consume / reserve / commit / release sequences on the database
agree with a small in-memory model of one member's quota."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import schemas as s
from loyalty.benefits import service
from loyalty.errors import Conflict, NotFound
from loyalty.http.principal import Principal
from loyalty.members.schemas import MemberCreate
from loyalty.members.service import enrol
from tests.support import make_programme, new_key

NAMES = {"en": "Returns", "zh-CN": "免费退货"}
ORDERS = [f"o{i}" for i in range(6)]
operations = st.lists(
    st.tuples(st.sampled_from(["consume", "reserve", "commit", "release"]), st.sampled_from(ORDERS)),
    max_size=25,
)


class Model:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.state: dict[str, str] = {}

    def taken(self) -> int:
        return sum(1 for v in self.state.values() if v in ("reserved", "committed"))

    def apply(self, op: str, order: str) -> str:
        current = self.state.get(order)
        if op in ("consume", "reserve"):
            if current is not None:
                return current
            if self.taken() >= self.limit:
                return "quota_exhausted"
            self.state[order] = "committed" if op == "consume" else "reserved"
            return self.state[order]
        if current is None:
            return "consumption_not_found"
        if op == "commit":
            if current == "released":
                return "consumption_released"
            self.state[order] = "committed"
        else:
            self.state[order] = "released"
        return self.state[order]


async def _run(engine: AsyncEngine, limit: int, ops: list[tuple[str, str]]) -> None:
    programme = await make_programme(engine)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=1)
    async with engine.begin() as conn:
        await enrol(conn, who, MemberCreate(member_id="m1"), new_key())
        await service.create(
            conn,
            who,
            s.BenefitCreate(code="q", type="quota", names=NAMES, params={"limit": limit, "period": "year"}),
        )
        await service.grant(conn, who, "m1", s.GrantCreate(benefit="q", reason="test"))
    model = Model(limit)
    for op, order in ops:
        expected = model.apply(op, order)
        try:
            async with engine.begin() as conn:
                result: Any
                if op in ("consume", "reserve"):
                    request = s.ConsumeRequest(member_id="m1", order_reference=order)
                    result = await service.consume(conn, who, "q", request, reserve=op == "reserve")
                else:
                    result = await service.settle(conn, who, "q", order, commit=op == "commit")
            got = result.state
        except Conflict as exc:
            got = exc.code
        except NotFound as exc:
            got = exc.code
        assert got == expected, (op, order, got, expected)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT coalesce(sum(used), 0), coalesce(sum(reserved), 0) FROM benefit_usage WHERE programme_id = :p"
                    ),
                    {"p": programme.id},
                )
            ).one()
        committed = sum(1 for v in model.state.values() if v == "committed")
        reserved = sum(1 for v in model.state.values() if v == "reserved")
        assert (row[0], row[1]) == (committed, reserved)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(min_value=1, max_value=3), ops=operations)
async def test_quota_matches_the_model(engine: AsyncEngine, limit: int, ops: list[tuple[str, str]]) -> None:
    await _run(engine, limit, ops)
