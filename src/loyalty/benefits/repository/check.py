"""SQL of the checkout check: one statement reads all that may change between two checks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import asyncpg

from loyalty import distribution

# $1 programme, $2 member external id, $3 benefit id, $4 now, $5 the quota period's start (or
# null), $6 the ids of the upgrade benefits that could bring $3 and $7 the tiers that include
# one of them (both from the cached catalogue; empty when no upgrade can bring $3, which skips
# that part). Everything that may change between two checks (tier, grants, revocations,
# campaigns and their segment rules, usage, facts, the ladder in force) is read here live;
# only the catalogue version is compared with the cache. The upgrade grants and campaigns of
# the member, and the ranks of the ladder in force, are read only when an upgrade may apply.
CHECK_SQL = """
SELECT m.id AS member_id, m.status,
       (SELECT v.version FROM benefit_catalogue_versions v WHERE v.programme_id = $1) AS version,
       et.tier, et.rank AS tier_rank,
       (SELECT jsonb_agg(jsonb_build_object('id', g.id, 'params', g.params, 'expires_at', g.expires_at)
                         ORDER BY g.id)
          FROM benefit_grants g
         WHERE g.programme_id = $1 AND g.member_id = m.id AND g.benefit_id = $3
           AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > $4))::text AS grants,
       (SELECT jsonb_agg(jsonb_build_object('code', c.code, 'rule', s.rule, 'params', c.params,
                                            'ends_at', c.ends_at) ORDER BY c.code)
          FROM benefit_campaigns c
          JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment
         WHERE c.programme_id = $1 AND c.benefit_id = $3 AND c.starts_at <= $4 AND c.ends_at > $4)::text
         AS campaigns,
       (SELECT u.used + u.reserved FROM benefit_usage u
         WHERE u.programme_id = $1 AND u.member_id = m.id AND u.benefit_id = $3
           AND u.period_start = $5) AS used,
       up.upgrades::text AS upgrades,
       (SELECT jsonb_object_agg(e->>'code', (e->>'rank')::int) FROM jsonb_array_elements(lad.tiers) e
         WHERE up.upgrades IS NOT NULL OR et.tier = ANY($7::text[]))::text AS ranks,
       f.qualifying_points, f.spend, f.orders, f.lifetime_points, f.lifetime_spend, f.lifetime_orders,
       f.last_order_at, m.enrolled_at, f.recency_score, f.frequency_score, f.monetary_score,
       f.lifecycle, f.tags, m.attributes::text AS attributes
  FROM members m
  LEFT JOIN member_facts f ON f.programme_id = m.programme_id AND f.member_id = m.id
  LEFT JOIN member_tiers t ON t.programme_id = m.programme_id AND t.member_id = m.id
  LEFT JOIN LATERAL (
       SELECT lv.definition->'tiers' AS tiers FROM tier_ladder_versions lv
        WHERE lv.programme_id = $1 AND lv.status IN ('published', 'superseded') AND lv.effective_at <= $4
        ORDER BY lv.effective_at DESC, lv.version DESC LIMIT 1
       ) lad ON true
  -- The tier as the tier engine reads it (definition.state_for): no row, or a tier the ladder
  -- in force no longer has, is its base tier; without a ladder, the row as stored.
  CROSS JOIN LATERAL (
       SELECT coalesce(k.code, t.tier) AS tier, coalesce(k.rank, t.rank) AS rank
         FROM (SELECT NULL) one
         LEFT JOIN LATERAL (
              SELECT e->>'code' AS code, (e->>'rank')::int AS rank FROM jsonb_array_elements(lad.tiers) e
               ORDER BY e->>'code' IS NOT DISTINCT FROM t.tier DESC, (e->>'rank')::int LIMIT 1
              ) k ON true
       ) et
  LEFT JOIN LATERAL (
       SELECT jsonb_agg(x ORDER BY x.kind, x.ref) AS upgrades
         FROM (SELECT 'grant' AS kind, g.id::text AS ref, g.benefit_id, g.params,
                      g.expires_at AS until, NULL::jsonb AS rule
                 FROM benefit_grants g
                WHERE cardinality($6::bigint[]) > 0
                  AND g.programme_id = $1 AND g.member_id = m.id AND g.benefit_id = ANY($6::bigint[])
                  AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > $4)
               UNION ALL
               SELECT 'segment', c.code, c.benefit_id, c.params, c.ends_at, s.rule
                 FROM benefit_campaigns c
                 JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment
                WHERE cardinality($6::bigint[]) > 0
                  AND c.programme_id = $1 AND c.benefit_id = ANY($6::bigint[])
                  AND c.starts_at <= $4 AND c.ends_at > $4) x
       ) up ON true
 WHERE m.programme_id = $1 AND m.external_id = $2
"""


# On Citus ($8 the member's key, docs/scaling.md): the same statement with every member-scoped
# table filtered by the member's key itself, so that the whole check is one router query on the
# member's shard; the catalogue, campaigns, segments and ladders are reference tables there.
CHECK_SQL_CITUS = CHECK_SQL.replace("member_id = m.id", "member_id = $8").replace(
    "WHERE m.programme_id = $1 AND m.external_id = $2",
    "WHERE m.programme_id = $1 AND m.external_id = $2 AND m.id = $8",
)
assert CHECK_SQL_CITUS.count("$8") == 6


async def check_row(
    conn: asyncpg.Connection,
    programme_id: int,
    external_id: str,
    benefit_id: int,
    now: datetime,
    period_start: date | None,
    upgrade_ids: Sequence[int] = (),
    upgrade_tiers: Sequence[str] = (),
) -> asyncpg.Record | None:
    args = (programme_id, external_id, benefit_id, now, period_start, list(upgrade_ids), list(upgrade_tiers))
    if distribution.Layout.citus:
        return await conn.fetchrow(CHECK_SQL_CITUS, *args, distribution.member_key(programme_id, external_id))
    return await conn.fetchrow(CHECK_SQL, *args)
