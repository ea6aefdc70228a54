-- The end of a member event in one call: the earns its rules planned, their cap usage, the
-- points on the member's facts and day, the member's tier row and the event's stored answer.
--
-- The caller (activity.service.record) has already, in the same transaction, stored the event,
-- taken the member's facts row, refreshed the facts, taken the rules' usage rows and the tier
-- row, and decided on those what each rule should earn and what the tier becomes. What only
-- the ledger knows is whether each budget pays in full: when every earn gets what was planned,
-- the event is finished here and p_response is stored with the earns' transaction ids filled
-- in. When one does not (a budget nearly spent, or a refusal), the points that were earned are
-- still counted, but the tier and the answer are left to the caller, which redoes them on what
-- was earned (finished = false).
--
-- p_earns: one object per planned earn, in rule order:
--   {"slot": index in p_response.rules, "rule_id", "periods": [["day", "2026-11-22"], ...],
--    "qualifying": bool, "pending": bool, and the arguments of activity_rule_earn:
--    "key", "fingerprint" (hex), "member", "budget", "amount", "reference", "reason",
--    "vests_at", "expires_at", "metadata", "actor"}
-- p_tier: the member_tiers columns to store (tiers.service.plan_tier's values), or null;
--   p_tier_new: the tier was decided on no row. The caller holds the row it read (FOR UPDATE);
--   with none, a row that appeared since (a pin) wins and the caller decides again.
-- p_history: member_tier_history rows ({at, kind, reason, from_tier, to_tier, ladder_version,
--   trace, facts, actor}); p_events: domain events ({type, subject, payload}) of a tier change.
-- p_response null: count the points but leave the tier and the answer to the caller.

CREATE OR REPLACE FUNCTION activity_event_apply(
    p_programme bigint, p_member bigint, p_row_id bigint, p_day date, p_amount bigint,
    p_earns jsonb, p_tier jsonb, p_tier_new boolean, p_history jsonb, p_events jsonb,
    p_outcome jsonb, p_response jsonb,
    OUT finished boolean, OUT results jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    r record;
    v_earned bigint;
    v_points bigint := 0;
    v_qualifying bigint := 0;
    v_response jsonb := p_response;
BEGIN
    finished := true;
    results := '[]';
    FOR e IN SELECT value FROM jsonb_array_elements(p_earns) LOOP
        SELECT * INTO r FROM activity_rule_earn(
            p_programme, e->>'key', decode(e->>'fingerprint', 'hex'), e->>'member', e->>'budget',
            (e->>'amount')::bigint, true, e->>'reference', e->>'reason', (e->>'vests_at')::timestamptz,
            (e->>'expires_at')::timestamptz, e->'metadata', e->>'actor');
        IF r.error_code IS NOT NULL THEN
            finished := false;
            results := results || jsonb_build_array(
                jsonb_build_object('error_code', r.error_code, 'error_detail', r.error_detail));
            CONTINUE;
        END IF;
        v_earned := (r.body->>'amount')::bigint;
        UPDATE earning_rule_usage u SET points = u.points + v_earned
        FROM jsonb_array_elements(e->'periods') p
        WHERE u.programme_id = p_programme AND u.member_id = p_member AND u.rule_id = (e->>'rule_id')::bigint
          AND u.period = p->>0 AND u.period_start = (p->>1)::date;
        v_points := v_points + v_earned;
        IF (e->>'qualifying')::boolean THEN
            v_qualifying := v_qualifying + v_earned;
        END IF;
        IF v_earned <> (e->>'amount')::bigint OR (r.body->>'status' = 'pending') <> (e->>'pending')::boolean THEN
            finished := false;
        END IF;
        results := results || jsonb_build_array(jsonb_build_object('body', r.body));
        v_response := jsonb_set(v_response, ARRAY['rules', e->>'slot', 'transaction_id'], r.body->'transaction_id');
    END LOOP;

    IF v_points <> 0 OR v_qualifying <> 0 THEN
        INSERT INTO member_activity_days AS d (programme_id, member_id, day, orders, spend, qualifying_points)
        VALUES (p_programme, p_member, p_day, 0, 0, v_qualifying)
        ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
            qualifying_points = d.qualifying_points + excluded.qualifying_points;
        -- Qualifying points count in the facts only when the event's day is in the window
        -- (the refresh, run just before, set window_start): a late event's points stay on its
        -- own day, out of the window, as a rebuild of the facts from the days finds them.
        UPDATE member_facts f SET lifetime_points = f.lifetime_points + greatest(v_points, 0),
            qualifying_points = f.qualifying_points + CASE
                WHEN coalesce(p_day >= CAST(f.window_start AT TIME ZONE p.timezone AS date), true)
                THEN v_qualifying ELSE 0 END,
            updated_at = now()
        FROM programmes p
        WHERE f.programme_id = p_programme AND f.member_id = p_member AND p.id = p_programme;
    END IF;
    IF p_response IS NULL THEN
        finished := false;  -- the caller finishes (a tier change writes more than a row)
    END IF;
    IF NOT finished THEN
        RETURN;
    END IF;

    IF p_tier IS NOT NULL AND p_tier_new THEN
        INSERT INTO member_tiers (programme_id, member_id, tier, rank, ladder_version, achieved_at,
                                  valid_until, grace_until, pin_kind, pin_tier, pin_until, pin_reason,
                                  next_assessment_at)
        SELECT p_programme, p_member, v.tier, v.rank, v.ladder_version, v.achieved_at, v.valid_until,
               v.grace_until, v.pin_kind, v.pin_tier, v.pin_until, v.pin_reason, v.next_assessment_at
        FROM jsonb_populate_record(NULL::member_tiers, p_tier) v
        ON CONFLICT (programme_id, member_id) DO NOTHING;
        IF NOT FOUND THEN
            finished := false;
            RETURN;
        END IF;
    ELSIF p_tier IS NOT NULL THEN
        UPDATE member_tiers t SET
            tier = v.tier, rank = v.rank, ladder_version = v.ladder_version, achieved_at = v.achieved_at,
            valid_until = v.valid_until, grace_until = v.grace_until, pin_kind = v.pin_kind,
            pin_tier = v.pin_tier, pin_until = v.pin_until, pin_reason = v.pin_reason,
            next_assessment_at = v.next_assessment_at, updated_at = now()
        FROM jsonb_populate_record(NULL::member_tiers, p_tier) v
        WHERE t.programme_id = p_programme AND t.member_id = p_member;
    END IF;
    INSERT INTO member_tier_history (programme_id, member_id, at, kind, reason, from_tier, to_tier,
                                     ladder_version, trace, facts, actor)
    SELECT p_programme, p_member, h.at, h.kind, h.reason, h.from_tier, h.to_tier, h.ladder_version,
           h.trace, h.facts, h.actor
    FROM jsonb_to_recordset(coalesce(p_history, '[]')) AS h(
        at timestamptz, kind text, reason text, from_tier text, to_tier text, ladder_version int,
        trace jsonb, facts jsonb, actor text);
    INSERT INTO domain_events (programme_id, type, subject, payload)
    SELECT p_programme, ev.value->>'type', ev.value->>'subject', ev.value->'payload'
    FROM jsonb_array_elements(coalesce(p_events, '[]')) ev;
    UPDATE member_events SET amount = p_amount, points = v_points, outcome = p_outcome, response = v_response
    WHERE programme_id = p_programme AND member_id = p_member AND id = p_row_id;
END $$;

-- A whole member event in one autocommit call, on a plan made from one read without locks
-- (activity.repository.read_for_event): the event row, the member's facts as that read
-- computed them, the order's activity day, the rules' usage rows, then activity_event_apply.
--
-- The plan holds only if what it was made from is unchanged, so the call first takes the
-- member's facts row and tier row (in the order every event takes them) and compares their
-- xmin (the id of the transaction that last wrote the row) and the programme's config version
-- with the read's. A difference raises SQLSTATE LYSTL (stale): nothing was written and the
-- caller reads and plans again. Every write to a member's activity days or rule usage also
-- writes the facts row, so its xmin stands for all of them.
--
-- When the ledger does not pay every earn as planned (activity_event_apply's finished =
-- false) the call raises LYTXN: nothing was written, and the caller records the event on its
-- transactional path, which decides the tier again on what was earned.
--
-- replayed: the event id was recorded meanwhile; nothing was written, the caller reads the
-- stored answer. Otherwise results are activity_event_apply's, one per earn.
-- p_facts: the member_facts columns of the read's refresh; p_usage: [[rule_id, period,
-- period_start], ...] of the rules that may earn.
CREATE OR REPLACE FUNCTION activity_event_write(
    p_programme bigint, p_member bigint, p_config_version int, p_facts_xmin bigint, p_tier_xmin bigint,
    p_event jsonb, p_facts jsonb, p_day date, p_spend bigint, p_add_day boolean, p_usage jsonb,
    p_amount bigint, p_earns jsonb, p_tier jsonb, p_tier_new boolean, p_history jsonb, p_events jsonb,
    p_outcome jsonb, p_response jsonb,
    OUT replayed boolean, OUT results jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_row bigint;
    v_xmin bigint;
    v_finished boolean;
BEGIN
    replayed := false;
    -- The event row first, as on the transactional path: its unique event id orders
    -- concurrent duplicates before any member lock is taken.
    INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref, amount,
                               currency, channel, payload)
    SELECT p_programme, p_member, e.event_id, e.type, e.occurred_at, e.order_ref, e.amount, e.currency,
           e.channel, p_event->'payload'
    FROM jsonb_to_record(p_event) AS e(event_id text, type text, occurred_at timestamptz, order_ref text,
                                       amount bigint, currency text, channel text)
    ON CONFLICT (programme_id, event_id) DO NOTHING
    RETURNING id INTO v_row;
    IF v_row IS NULL THEN
        replayed := true;
        RETURN;
    END IF;

    IF (SELECT config_version FROM programmes WHERE id = p_programme) IS DISTINCT FROM p_config_version THEN
        RAISE EXCEPTION 'the programme''s configuration changed since the read' USING ERRCODE = 'LYSTL';
    END IF;
    SELECT xmin::text::bigint INTO v_xmin FROM member_facts
    WHERE programme_id = p_programme AND member_id = p_member FOR UPDATE;
    IF v_xmin IS DISTINCT FROM p_facts_xmin THEN
        RAISE EXCEPTION 'the member''s facts changed since the read' USING ERRCODE = 'LYSTL';
    END IF;
    IF v_xmin IS NULL THEN
        INSERT INTO member_facts (programme_id, member_id) VALUES (p_programme, p_member)
        ON CONFLICT (programme_id, member_id) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the member''s facts appeared since the read' USING ERRCODE = 'LYSTL';
        END IF;
    END IF;
    v_xmin := NULL;
    SELECT xmin::text::bigint INTO v_xmin FROM member_tiers
    WHERE programme_id = p_programme AND member_id = p_member FOR UPDATE;
    IF v_xmin IS DISTINCT FROM p_tier_xmin THEN
        RAISE EXCEPTION 'the member''s tier changed since the read' USING ERRCODE = 'LYSTL';
    END IF;

    UPDATE member_facts f SET
        qualifying_points = v.qualifying_points, spend = v.spend, orders = v.orders,
        lifetime_points = v.lifetime_points, lifetime_spend = v.lifetime_spend,
        lifetime_orders = v.lifetime_orders, first_order_at = v.first_order_at,
        last_order_at = v.last_order_at, recency_score = v.recency_score,
        frequency_score = v.frequency_score, monetary_score = v.monetary_score, lifecycle = v.lifecycle,
        window_start = v.window_start, updated_at = now()
    FROM jsonb_populate_record(NULL::member_facts, p_facts) v
    WHERE f.programme_id = p_programme AND f.member_id = p_member;
    IF p_add_day THEN
        INSERT INTO member_activity_days AS d (programme_id, member_id, day, orders, spend, qualifying_points)
        VALUES (p_programme, p_member, p_day, 1, p_spend, 0)
        ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
            orders = d.orders + excluded.orders, spend = d.spend + excluded.spend;
    END IF;
    INSERT INTO earning_rule_usage (programme_id, member_id, rule_id, period, period_start, points)
    SELECT p_programme, p_member, (u->>0)::bigint, u->>1, (u->>2)::date, 0
    FROM jsonb_array_elements(p_usage) u
    ORDER BY 3, 4, 5
    ON CONFLICT (programme_id, member_id, rule_id, period, period_start) DO NOTHING;

    SELECT a.finished, a.results INTO v_finished, results
    FROM activity_event_apply(p_programme, p_member, v_row, p_day, p_amount, p_earns, p_tier, p_tier_new,
                              p_history, p_events, p_outcome, p_response) a;
    IF NOT v_finished THEN
        RAISE EXCEPTION 'the ledger did not pay every earn as planned' USING ERRCODE = 'LYTXN';
    END IF;
END $$;
