"""Two deciders of one question agree: the checkout check (one read, decided in Python by
core.decide) and benefit_consume (decided in SQL) say the same of every member and benefit —
tiers on the ladder in force, grants, segment campaigns, upgrades by grant, by tier and by
campaign, upgrades at or below the member's tier, validity, channels and quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
from tests.api.test_benefit_upgrades import _grant, _include
from tests.api.test_benefits import benefit, check, set_tier
from tests.api.test_tiers import published

MEMBERS: dict[str, dict[str, Any]] = {
    "base": {},
    "silver": {"tier": "silver"},
    "gold": {"tier": "gold"},
    "silver-to-gold": {"tier": "silver", "grants": ["to-gold"]},
    "gold-to-silver": {"tier": "gold", "grants": ["to-silver"]},
    "base-to-gold-limit": {"grants": ["to-gold", "returns"]},
    "silver-lifted-by-tier": {"tier": "silver-plus"},
    "sh": {"attributes": {"city": "sh"}},
    "bj": {"attributes": {"city": "bj"}, "tier": "silver"},
    "granted-old": {"grants": ["old", "app-only", "spring"]},
    "upgrade-only": {"grants": ["to-gold"], "tier": "gold"},
}
BENEFITS = ("returns", "lounge", "spring", "old", "app-only", "to-gold")


async def _programme(api: Api, engine: AsyncEngine) -> None:
    await published(api)  # bronze (base) < silver < gold
    now = datetime.now(UTC)
    await benefit(api, "lounge")
    await benefit(api, "returns", "quota", params={"limit": 1, "period": "month"})
    await benefit(api, "spring", "discount", params={"percent": 10})
    await benefit(api, "old", valid_until=(now - timedelta(days=1)).isoformat())
    await benefit(api, "app-only", channels=["app"])
    await benefit(api, "to-gold", "upgrade", params={"tier": "gold"})
    await benefit(api, "to-silver", "upgrade", params={"tier": "silver"})
    await _include(api, "silver", [{"benefit": "returns", "params": {"limit": 3}}])
    await _include(api, "gold", [{"benefit": "lounge"}, {"benefit": "returns", "params": {"limit": 5}}])
    # A tier off the ladder, including an upgrade: its member is on the base tier instead.
    await _include(api, "silver-plus", [{"benefit": "to-gold"}])
    for code, rule in (("sh", "sh"), ("bj", "bj")):
        await api.post(
            "/v1/segments", {"code": code, "rule": {"fact": "attributes.city", "op": "==", "value": rule}}
        )
    for code, segment, given, params in (
        ("gold-week", "sh", "to-gold", {}),
        ("bj-returns", "bj", "returns", {"limit": 4}),
        ("bj-spring", "bj", "spring", {"percent": 20}),
    ):
        await api.post(
            "/v1/benefit-campaigns",
            {
                "code": code,
                "segment": segment,
                "benefit": given,
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(days=7)).isoformat(),
                "params": params,
            },
            role="marketing",
        )
    for member, setup in MEMBERS.items():
        await api.enrol(member, attributes=setup.get("attributes"))
        if "tier" in setup:
            await set_tier(engine, api, member, setup["tier"])
        for code in setup.get("grants", ()):
            await _grant(api, member, code)


async def test_consume_decides_as_the_check_does(api: Api, engine: AsyncEngine) -> None:
    await _programme(api, engine)
    disagreements = []
    decided = 0
    consumed: dict[tuple[str, str], Any] = {}
    for member in MEMBERS:
        for code in BENEFITS:
            for channel in (None, "web"):
                params = {"channel": channel} if channel else {}
                checked = await check(api, code, member, **params)
                body: dict[str, Any] = {"member_id": member, "order_reference": f"{member}-{code}-{channel}"}
                if channel:
                    body["channel"] = channel
                r = await api.post(f"/v1/benefits/{code}/consume", body, role="ecommerce", expect=None)
                if channel is None:
                    consumed[member, code] = r.json().get("limit", r.status_code)
                if checked["allowed"]:
                    decided += 1
                    expected = (201, checked.get("limit"), (checked.get("remaining") or 1) - 1)
                    got = (r.status_code, r.json().get("limit"), r.json().get("remaining", 0))
                    if checked.get("limit") is None:
                        expected, got = expected[:1], got[:1]
                else:
                    expected = (409, checked["reason"])
                    got = (r.status_code, r.json().get("reason"))
                if expected != got:
                    disagreements.append((member, code, channel, checked, r.json()))
    assert not disagreements, disagreements
    assert decided >= 20  # the scenarios are not all refusals
    # What the scenarios are there for: the best source's limit, however it comes.
    assert consumed["silver-to-gold", "returns"] == 5  # an upgrade grant lifts silver to gold
    assert consumed["silver-to-gold", "lounge"] == 201
    assert consumed["gold-to-silver", "returns"] == 5  # an upgrade never lowers
    assert consumed["sh", "lounge"] == 201  # an upgrade campaign lifts its segment
    assert consumed["bj", "returns"] == 4  # a campaign beats the tier's 3
    assert consumed["base-to-gold-limit", "returns"] == 5  # the upgrade beats the grant's 1
    assert consumed["base", "lounge"] == consumed["silver-lifted-by-tier", "lounge"] == 409
