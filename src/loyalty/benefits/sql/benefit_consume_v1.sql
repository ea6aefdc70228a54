-- One use of a benefit for an order (consume, or reserve until commit / release / timeout),
-- decided and written in one statement: benefit and member lookup, idempotency by
-- (benefit, order_reference), the member's sources (tier, grants, segment campaigns and what
-- their upgrades bring), the quota counter, the benefit.consumed outbox row and the answer.
--
-- What needs Python is the segment rule evaluation over the member's facts. When campaigns
-- giving the benefit (or an upgrade that could bring it) are running and p_segments does not
-- say how each of them was evaluated, nothing is written: the answer is
-- {"outcome": "segments"} with the campaigns' rules, a stamp of each rule and the member's
-- facts. The caller evaluates them and calls again with
-- p_segments = {"seen": {code: stamp}, "matched": [code, ...]}; a campaign started since, or
-- a rule that changed, is not in "seen" with its stamp and answers "segments" again.
--
-- Races: the member's tier row and the grants relied on (the benefit's own and its upgrades')
-- are held FOR NO KEY UPDATE, so a demotion or revocation waits for the consumption, and one
-- committed before it is seen; the quota is taken by one conditional upsert on the usage row,
-- whose row lock serialises concurrent takers (used + reserved never passes the limit).
--
-- Answers (jsonb, as text):
--   {"outcome": "ok", "state", "period_start", "limit", "remaining"}
--   {"outcome": "replayed", "state", "period_start", "expires_at", "member"}
--   {"outcome": "refused", "reason", "remaining"}
--   {"outcome": "error", "code"}   benefit_not_found | member_not_found | member_not_active
--                                  | order_reference_reused
--   {"outcome": "segments", "campaigns": [{code, rule, stamp}], "facts": {...}}
--
-- On Citus (docs/scaling.md) the call is delegated by p_member_key, the member's
-- loyalty_member_key (computed here when the caller did not give it), and every statement names
-- the member's shard: the member, their tier, grants, usage and consumptions sit there, and the
-- catalogue (benefits, tier_benefits, campaigns, segments, ladders) is replicated to every node.
-- An order reference is unique per member there: one reused for another member is not seen.

-- benefit_consume gained p_member_key.
DROP FUNCTION IF EXISTS benefit_consume(bigint, text, text, text, text, boolean, timestamptz, timestamptz, text, text);

CREATE OR REPLACE FUNCTION benefit_utc_text(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The local date the current period of a quota started in the programme's time zone, as
-- core.period_bounds computes it (ISO weeks start on Monday, as date_trunc's do).
CREATE OR REPLACE FUNCTION benefit_period_start(p_period text, p_now timestamptz, p_tz text) RETURNS date
LANGUAGE sql STABLE AS $$
    SELECT date_trunc(p_period, p_now AT TIME ZONE p_tz)::date
$$;

CREATE OR REPLACE FUNCTION benefit_consume(
    p_programme bigint,
    p_code text,
    p_member text,
    p_order text,
    p_channel text,
    p_reserve boolean,
    p_expires_at timestamptz,
    p_now timestamptz,
    p_tz text,
    p_segments text,
    p_member_key bigint DEFAULT NULL
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    b benefits%ROWTYPE;
    v_member bigint;
    v_status text;
    v_period date;
    v_prior record;
    v_segments jsonb := p_segments::jsonb;
    v_upgrade_ids bigint[] := '{}';
    v_ids bigint[];
    v_campaigns jsonb;
    v_matched jsonb := '[]';
    v_stored_tier text;
    v_ladder jsonb;
    v_tier text;
    v_rank int;
    v_grants jsonb;
    v_default_limit int;
    v_limit int;
    v_found boolean;
    v_claim bigint;
    v_taken int;
    v_remaining int;
BEGIN
--citus: p_member_key := coalesce(p_member_key, loyalty_member_key(p_programme, p_member));
--citus: -- Rows written with DEFAULT ledger_owner() belong to the member too.
--citus: PERFORM set_config('loyalty.owner', p_member_key::text, true);
    SELECT * INTO b FROM benefits WHERE programme_id = p_programme AND code = p_code;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'error', 'code', 'benefit_not_found')::text;
    END IF;
    SELECT id, status INTO v_member, v_status
      FROM members WHERE programme_id = p_programme AND external_id = p_member
--citus:   AND id = p_member_key
    ;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'error', 'code', 'member_not_found')::text;
    END IF;

    -- A known order answers as it was first answered, before any other check.
    SELECT member_id, state, period_start, expires_at INTO v_prior FROM benefit_consumptions
     WHERE programme_id = p_programme AND benefit_id = b.id AND order_reference = p_order
--citus:   AND member_id = v_member
    ;
    IF FOUND THEN
        RETURN benefit_consume_replay(v_prior.member_id, v_member, v_prior.state, v_prior.period_start,
                                      v_prior.expires_at);
    END IF;
    IF v_status <> 'active' THEN
        RETURN jsonb_build_object('outcome', 'error', 'code', 'member_not_active')::text;
    END IF;

    -- core.availability
    IF NOT b.active THEN
        RETURN jsonb_build_object('outcome', 'refused', 'reason', 'benefit_inactive')::text;
    ELSIF b.valid_from IS NOT NULL AND p_now < b.valid_from THEN
        RETURN jsonb_build_object('outcome', 'refused', 'reason', 'not_yet_valid')::text;
    ELSIF b.valid_until IS NOT NULL AND p_now >= b.valid_until THEN
        RETURN jsonb_build_object('outcome', 'refused', 'reason', 'benefit_expired')::text;
    ELSIF p_channel IS NOT NULL AND coalesce(cardinality(b.channels), 0) > 0
          AND NOT p_channel = ANY (b.channels) THEN
        RETURN jsonb_build_object('outcome', 'refused', 'reason', 'channel_not_allowed')::text;
    END IF;

    -- An upgrade can bring the benefit only if some tier includes it; upgrades do not chain.
    IF b.type <> 'upgrade' AND EXISTS (
        SELECT 1 FROM tier_benefits tb WHERE tb.programme_id = p_programme AND tb.benefit_id = b.id
    ) THEN
        SELECT coalesce(array_agg(u.id), '{}') INTO v_upgrade_ids
          FROM benefits u WHERE u.programme_id = p_programme AND u.type = 'upgrade';
    END IF;
    v_ids := b.id || v_upgrade_ids;

    -- Running campaigns of the benefit and its upgrades: their rules are evaluated by the caller.
    SELECT jsonb_agg(jsonb_build_object('code', c.code, 'benefit_id', c.benefit_id, 'params', c.params,
                                        'rule', s.rule, 'stamp', md5(s.rule::text)) ORDER BY c.code)
      INTO v_campaigns
      FROM benefit_campaigns c
      JOIN segments s ON s.programme_id = c.programme_id AND s.code = c.segment
     WHERE c.programme_id = p_programme AND c.benefit_id = ANY (v_ids)
       AND c.starts_at <= p_now AND c.ends_at > p_now;
    IF v_campaigns IS NOT NULL THEN
        IF v_segments IS NULL OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(v_campaigns) c
             WHERE v_segments->'seen'->>(c->>'code') IS DISTINCT FROM c->>'stamp'
        ) THEN
            RETURN jsonb_build_object(
                'outcome', 'segments',
                'campaigns', (SELECT jsonb_agg(c - 'benefit_id' - 'params') FROM jsonb_array_elements(v_campaigns) c),
                'facts', (
                    SELECT jsonb_build_object(
                        'qualifying_points', f.qualifying_points, 'spend', f.spend, 'orders', f.orders,
                        'lifetime_points', f.lifetime_points, 'lifetime_spend', f.lifetime_spend,
                        'lifetime_orders', f.lifetime_orders, 'last_order_at', f.last_order_at,
                        'enrolled_at', m.enrolled_at, 'recency_score', f.recency_score,
                        'frequency_score', f.frequency_score, 'monetary_score', f.monetary_score,
                        'lifecycle', f.lifecycle, 'tier', t.tier, 'tags', f.tags,
                        'attributes', m.attributes::text)
                      FROM members m
                      LEFT JOIN member_facts f ON f.programme_id = m.programme_id AND f.member_id = m.id
                      LEFT JOIN member_tiers t ON t.programme_id = m.programme_id AND t.member_id = m.id
                     WHERE m.programme_id = p_programme AND m.id = v_member)
            )::text;
        END IF;
        SELECT coalesce(jsonb_agg(c), '[]') INTO v_matched FROM jsonb_array_elements(v_campaigns) c
         WHERE v_segments->'matched' ? (c->>'code');
    END IF;

    -- The tier as the tier engine reads it (definition.state_for), its row locked: no row, or a
    -- tier the ladder in force no longer has, is that ladder's base tier; without a ladder, the
    -- row as stored.
    SELECT t.tier, t.rank INTO v_stored_tier, v_rank FROM member_tiers t
     WHERE t.programme_id = p_programme AND t.member_id = v_member
       FOR NO KEY UPDATE;
    v_tier := v_stored_tier;
    SELECT lv.definition->'tiers' INTO v_ladder FROM tier_ladder_versions lv
     WHERE lv.programme_id = p_programme AND lv.status IN ('published', 'superseded')
       AND lv.effective_at <= p_now
     ORDER BY lv.effective_at DESC, lv.version DESC LIMIT 1;
    IF v_ladder IS NOT NULL AND jsonb_array_length(v_ladder) > 0 THEN
        SELECT e->>'code', (e->>'rank')::int INTO v_tier, v_rank FROM jsonb_array_elements(v_ladder) e
         ORDER BY e->>'code' IS NOT DISTINCT FROM v_stored_tier DESC, (e->>'rank')::int LIMIT 1;
    ELSE
        v_ladder := NULL;
    END IF;

    -- The grants relied on, held until the end of the transaction.
    WITH locked AS (
        SELECT g.benefit_id, g.params FROM benefit_grants g
         WHERE g.programme_id = p_programme AND g.member_id = v_member AND g.benefit_id = ANY (v_ids)
           AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > p_now)
         ORDER BY g.id
           FOR NO KEY UPDATE
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('benefit_id', benefit_id, 'params', params)), '[]')
      INTO v_grants FROM locked;

    -- Every source of the benefit: for a quota the best is the highest limit (core.best_source);
    -- for the other types any source entitles.
    v_default_limit := (b.params->>'limit')::int;
    WITH upgrade_sources AS (
        SELECT tb.benefit_id AS upgrade_id, tb.params FROM tier_benefits tb
         WHERE tb.programme_id = p_programme AND tb.tier = v_tier AND tb.benefit_id = ANY (v_upgrade_ids)
        UNION ALL
        SELECT (g->>'benefit_id')::bigint, g->'params' FROM jsonb_array_elements(v_grants) g
         WHERE (g->>'benefit_id')::bigint = ANY (v_upgrade_ids)
        UNION ALL
        SELECT (c->>'benefit_id')::bigint, c->'params' FROM jsonb_array_elements(v_matched) c
         WHERE (c->>'benefit_id')::bigint = ANY (v_upgrade_ids)
    ), lifts AS (
        -- core.lifts: the upgrade is active and valid now, its tier on the ladder in force
        -- above the member's own.
        SELECT DISTINCT coalesce(src.params->>'tier', u.params->>'tier') AS tier
          FROM upgrade_sources src
          JOIN benefits u ON u.programme_id = p_programme AND u.id = src.upgrade_id AND u.active
               AND (u.valid_from IS NULL OR u.valid_from <= p_now)
               AND (u.valid_until IS NULL OR u.valid_until > p_now)
          JOIN jsonb_array_elements(v_ladder) e
            ON e->>'code' = coalesce(src.params->>'tier', u.params->>'tier')
           AND (e->>'rank')::int > CASE WHEN v_tier IS NULL THEN 0 ELSE coalesce(v_rank, 0) END
    ), sources AS (
        SELECT tb.params FROM tier_benefits tb
         WHERE tb.programme_id = p_programme AND tb.tier = v_tier AND tb.benefit_id = b.id
        UNION ALL
        SELECT g->'params' FROM jsonb_array_elements(v_grants) g WHERE (g->>'benefit_id')::bigint = b.id
        UNION ALL
        SELECT c->'params' FROM jsonb_array_elements(v_matched) c WHERE (c->>'benefit_id')::bigint = b.id
        UNION ALL
        -- core.through_upgrades: what the lifted tier includes of the benefit.
        SELECT tb.params FROM lifts l
          JOIN tier_benefits tb ON tb.programme_id = p_programme AND tb.tier = l.tier AND tb.benefit_id = b.id
    )
    SELECT count(*) > 0, max(coalesce((params->>'limit')::int, v_default_limit))
      INTO v_found, v_limit FROM sources;
    IF NOT v_found THEN
        RETURN jsonb_build_object('outcome', 'refused', 'reason', 'not_entitled')::text;
    END IF;

    IF b.type = 'quota' THEN
        -- The quota's period is the benefit's own (a source may override only the limit).
        v_period := benefit_period_start(b.params->>'period', p_now, p_tz);
    ELSE
        v_limit := NULL;
    END IF;
    INSERT INTO benefit_consumptions
           (programme_id, benefit_id, member_id, order_reference, period_start, state, expires_at)
    VALUES (p_programme, b.id, v_member, p_order, v_period,
            CASE WHEN p_reserve THEN 'reserved' ELSE 'committed' END,
            p_expires_at)
    ON CONFLICT (programme_id, benefit_id, order_reference) DO NOTHING --@plain
--citus: ON CONFLICT (programme_id, benefit_id, order_reference, member_id) DO NOTHING
    RETURNING id INTO v_claim;
    IF v_claim IS NULL THEN
        -- A twin of this order committed while this one waited on the unique index.
        SELECT member_id, state, period_start, expires_at INTO v_prior FROM benefit_consumptions
         WHERE programme_id = p_programme AND benefit_id = b.id AND order_reference = p_order
--citus:       AND member_id = v_member
        ;
        RETURN benefit_consume_replay(v_prior.member_id, v_member, v_prior.state, v_prior.period_start,
                                      v_prior.expires_at);
    END IF;

    IF v_period IS NOT NULL AND v_limit IS NOT NULL THEN
        IF p_reserve THEN
            INSERT INTO benefit_usage AS u (programme_id, member_id, benefit_id, period_start, reserved)
            VALUES (p_programme, v_member, b.id, v_period, 1)
            ON CONFLICT (programme_id, member_id, benefit_id, period_start) DO UPDATE
               SET reserved = u.reserved + 1 WHERE u.used + u.reserved < v_limit
            RETURNING u.used + u.reserved INTO v_taken;
        ELSE
            INSERT INTO benefit_usage AS u (programme_id, member_id, benefit_id, period_start, used)
            VALUES (p_programme, v_member, b.id, v_period, 1)
            ON CONFLICT (programme_id, member_id, benefit_id, period_start) DO UPDATE
               SET used = u.used + 1 WHERE u.used + u.reserved < v_limit
            RETURNING u.used + u.reserved INTO v_taken;
        END IF;
        IF v_taken IS NULL THEN
            -- Exhausted: the claim goes too, so a retry of this order is decided afresh.
            DELETE FROM benefit_consumptions WHERE programme_id = p_programme AND id = v_claim
--citus:       AND member_id = v_member
            ;
            RETURN jsonb_build_object('outcome', 'refused', 'reason', 'quota_exhausted', 'remaining', 0)::text;
        END IF;
        v_remaining := greatest(v_limit - v_taken, 0);
    END IF;

    -- On Citus the event is written only when an active endpoint of the programme wants it (as
    -- the ledger's are), so that a consume without endpoints writes on the member's shard alone.
    IF NOT p_reserve
--citus:    AND EXISTS (SELECT 1 FROM webhook_endpoints ep
--citus:                 WHERE ep.programme_id = p_programme AND ep.active
--citus:                   AND ('benefit.consumed' = ANY (ep.event_types) OR '*' = ANY (ep.event_types)))
    THEN
        INSERT INTO domain_events (programme_id, type, subject, payload)
        VALUES (p_programme, 'benefit.consumed', 'member:' || p_member,
                jsonb_build_object('member_id', p_member, 'benefit', b.code, 'order_reference', p_order,
                                   'state', 'committed', 'period_start', to_char(v_period, 'YYYY-MM-DD'),
                                   'remaining', v_remaining, 'used', NULL));
    END IF;
    RETURN jsonb_build_object(
        'outcome', 'ok',
        'state', CASE WHEN p_reserve THEN 'reserved' ELSE 'committed' END,
        'period_start', to_char(v_period, 'YYYY-MM-DD'),
        'limit', v_limit,
        'remaining', v_remaining
    )::text;
END $$;

CREATE OR REPLACE FUNCTION benefit_consume_replay(
    p_prior_member bigint, p_member bigint, p_state text, p_period date, p_expires_at timestamptz
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_prior_member <> p_member
                THEN jsonb_build_object('outcome', 'error', 'code', 'order_reference_reused')
                ELSE jsonb_build_object('outcome', 'replayed', 'state', p_state,
                                        'period_start', to_char(p_period, 'YYYY-MM-DD'),
                                        'expires_at', benefit_utc_text(p_expires_at))
           END::text
$$;

--citus: SELECT create_distributed_function('benefit_consume(bigint, text, text, text, text, boolean, timestamptz, timestamptz, text, text, bigint)', 'p_member_key', colocate_with := 'members');
