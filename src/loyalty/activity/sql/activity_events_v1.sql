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
--citus: p jsonb;
--citus: v_tz text;
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
        UPDATE earning_rule_usage u SET points = u.points + v_earned --@plain
        FROM jsonb_array_elements(e->'periods') p --@plain
        WHERE u.programme_id = p_programme AND u.member_id = p_member AND u.rule_id = (e->>'rule_id')::bigint --@plain
          AND u.period = p->>0 AND u.period_start = (p->>1)::date; --@plain
--citus: -- One router statement per period (a distributed UPDATE may not join a function's rows).
--citus: FOR p IN SELECT value FROM jsonb_array_elements(e->'periods') LOOP
--citus:     UPDATE earning_rule_usage u SET points = u.points + v_earned
--citus:     WHERE u.programme_id = p_programme AND u.member_id = p_member AND u.rule_id = (e->>'rule_id')::bigint
--citus:       AND u.period = p->>0 AND u.period_start = (p->>1)::date;
--citus: END LOOP;
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
        UPDATE member_facts f SET lifetime_points = f.lifetime_points + greatest(v_points, 0), --@plain
            qualifying_points = f.qualifying_points + CASE --@plain
                WHEN coalesce(p_day >= CAST(f.window_start AT TIME ZONE p.timezone AS date), true) --@plain
                THEN v_qualifying ELSE 0 END, --@plain
            updated_at = now() --@plain
        FROM programmes p --@plain
        WHERE f.programme_id = p_programme AND f.member_id = p_member AND p.id = p_programme; --@plain
--citus: v_tz := (SELECT timezone FROM programmes WHERE id = p_programme);
--citus: UPDATE member_facts f SET lifetime_points = f.lifetime_points + greatest(v_points, 0),
--citus:     qualifying_points = f.qualifying_points + CASE
--citus:         WHEN coalesce(p_day >= CAST(f.window_start AT TIME ZONE v_tz AS date), true)
--citus:         THEN v_qualifying ELSE 0 END,
--citus:     updated_at = now()
--citus: WHERE f.programme_id = p_programme AND f.member_id = p_member;
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
        SELECT p_programme, p_member, v.tier, v.rank, v.ladder_version, v.achieved_at, v.valid_until, --@plain
               v.grace_until, v.pin_kind, v.pin_tier, v.pin_until, v.pin_reason, v.next_assessment_at --@plain
        FROM jsonb_populate_record(NULL::member_tiers, p_tier) v --@plain
--citus: -- INSERT ... VALUES: a distributed INSERT ... SELECT would be planned on its own.
--citus: VALUES (p_programme, p_member, p_tier->>'tier', (p_tier->>'rank')::int, (p_tier->>'ladder_version')::int,
--citus:         (p_tier->>'achieved_at')::timestamptz, (p_tier->>'valid_until')::timestamptz,
--citus:         (p_tier->>'grace_until')::timestamptz, p_tier->>'pin_kind', p_tier->>'pin_tier',
--citus:         (p_tier->>'pin_until')::timestamptz, p_tier->>'pin_reason',
--citus:         (p_tier->>'next_assessment_at')::timestamptz)
        ON CONFLICT (programme_id, member_id) DO NOTHING;
        IF NOT FOUND THEN
            finished := false;
            RETURN;
        END IF;
    ELSIF p_tier IS NOT NULL THEN
        UPDATE member_tiers t SET --@plain
            tier = v.tier, rank = v.rank, ladder_version = v.ladder_version, achieved_at = v.achieved_at, --@plain
            valid_until = v.valid_until, grace_until = v.grace_until, pin_kind = v.pin_kind, --@plain
            pin_tier = v.pin_tier, pin_until = v.pin_until, pin_reason = v.pin_reason, --@plain
            next_assessment_at = v.next_assessment_at, updated_at = now() --@plain
        FROM jsonb_populate_record(NULL::member_tiers, p_tier) v --@plain
        WHERE t.programme_id = p_programme AND t.member_id = p_member; --@plain
--citus: UPDATE member_tiers t SET
--citus:     tier = p_tier->>'tier', rank = (p_tier->>'rank')::int, ladder_version = (p_tier->>'ladder_version')::int,
--citus:     achieved_at = (p_tier->>'achieved_at')::timestamptz, valid_until = (p_tier->>'valid_until')::timestamptz,
--citus:     grace_until = (p_tier->>'grace_until')::timestamptz, pin_kind = p_tier->>'pin_kind',
--citus:     pin_tier = p_tier->>'pin_tier', pin_until = (p_tier->>'pin_until')::timestamptz,
--citus:     pin_reason = p_tier->>'pin_reason', next_assessment_at = (p_tier->>'next_assessment_at')::timestamptz,
--citus:     updated_at = now()
--citus: WHERE t.programme_id = p_programme AND t.member_id = p_member;
    END IF;
    INSERT INTO member_tier_history (programme_id, member_id, at, kind, reason, from_tier, to_tier, --@plain
                                     ladder_version, trace, facts, actor) --@plain
    SELECT p_programme, p_member, h.at, h.kind, h.reason, h.from_tier, h.to_tier, h.ladder_version, --@plain
           h.trace, h.facts, h.actor --@plain
    FROM jsonb_to_recordset(coalesce(p_history, '[]')) AS h( --@plain
        at timestamptz, kind text, reason text, from_tier text, to_tier text, ladder_version int, --@plain
        trace jsonb, facts jsonb, actor text); --@plain
    INSERT INTO domain_events (programme_id, type, subject, payload) --@plain
    SELECT p_programme, ev.value->>'type', ev.value->>'subject', ev.value->'payload' --@plain
    FROM jsonb_array_elements(coalesce(p_events, '[]')) ev; --@plain
--citus: -- Row by row with VALUES (each a router INSERT on the member's shard).
--citus: FOR e IN SELECT value FROM jsonb_array_elements(coalesce(p_history, '[]')) LOOP
--citus:     INSERT INTO member_tier_history (programme_id, member_id, at, kind, reason, from_tier, to_tier,
--citus:                                      ladder_version, trace, facts, actor)
--citus:     VALUES (p_programme, p_member, (e->>'at')::timestamptz, e->>'kind', e->>'reason', e->>'from_tier',
--citus:             e->>'to_tier', (e->>'ladder_version')::int, e->'trace', e->'facts', e->>'actor');
--citus: END LOOP;
--citus: -- The outbox gets a tier change only when an active endpoint wants it: an event nobody
--citus: -- subscribed to leaves the member's shard untouched by anything else.
--citus: FOR e IN SELECT value FROM jsonb_array_elements(coalesce(p_events, '[]')) LOOP
--citus:     IF EXISTS (SELECT 1 FROM webhook_endpoints ep
--citus:                WHERE ep.active AND ep.programme_id = p_programme
--citus:                  AND ('*' = ANY (ep.event_types) OR e->>'type' = ANY (ep.event_types))) THEN
--citus:         INSERT INTO domain_events (programme_id, type, subject, payload)
--citus:         VALUES (p_programme, e->>'type', e->>'subject', e->'payload');
--citus:     END IF;
--citus: END LOOP;
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
--citus: u jsonb;
BEGIN
    replayed := false;
--citus: -- Rows without a member column of their own default to the member (ledger_owner()).
--citus: PERFORM set_config('loyalty.owner', p_member::text, true);
    -- The event row first, as on the transactional path: its unique event id orders
    -- concurrent duplicates before any member lock is taken.
    INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref, amount,
                               currency, channel, payload)
    SELECT p_programme, p_member, e.event_id, e.type, e.occurred_at, e.order_ref, e.amount, e.currency, --@plain
           e.channel, p_event->'payload' --@plain
    FROM jsonb_to_record(p_event) AS e(event_id text, type text, occurred_at timestamptz, order_ref text, --@plain
                                       amount bigint, currency text, channel text) --@plain
    ON CONFLICT (programme_id, event_id) DO NOTHING --@plain
--citus: VALUES (p_programme, p_member, p_event->>'event_id', p_event->>'type', (p_event->>'occurred_at')::timestamptz,
--citus:         p_event->>'order_ref', (p_event->>'amount')::bigint, p_event->>'currency', p_event->>'channel',
--citus:         p_event->'payload')
--citus: -- The event id is unique per member on Citus (a retry names the same member).
--citus: ON CONFLICT (programme_id, event_id, member_id) DO NOTHING
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

    UPDATE member_facts f SET --@plain
        qualifying_points = v.qualifying_points, spend = v.spend, orders = v.orders, --@plain
        lifetime_points = v.lifetime_points, lifetime_spend = v.lifetime_spend, --@plain
        lifetime_orders = v.lifetime_orders, first_order_at = v.first_order_at, --@plain
        last_order_at = v.last_order_at, recency_score = v.recency_score, --@plain
        frequency_score = v.frequency_score, monetary_score = v.monetary_score, lifecycle = v.lifecycle, --@plain
        window_start = v.window_start, updated_at = now() --@plain
    FROM jsonb_populate_record(NULL::member_facts, p_facts) v --@plain
    WHERE f.programme_id = p_programme AND f.member_id = p_member; --@plain
--citus: UPDATE member_facts f SET
--citus:     qualifying_points = (p_facts->>'qualifying_points')::bigint, spend = (p_facts->>'spend')::bigint,
--citus:     orders = (p_facts->>'orders')::int, lifetime_points = (p_facts->>'lifetime_points')::bigint,
--citus:     lifetime_spend = (p_facts->>'lifetime_spend')::bigint, lifetime_orders = (p_facts->>'lifetime_orders')::int,
--citus:     first_order_at = (p_facts->>'first_order_at')::timestamptz,
--citus:     last_order_at = (p_facts->>'last_order_at')::timestamptz,
--citus:     recency_score = (p_facts->>'recency_score')::int, frequency_score = (p_facts->>'frequency_score')::int,
--citus:     monetary_score = (p_facts->>'monetary_score')::int, lifecycle = p_facts->>'lifecycle',
--citus:     window_start = (p_facts->>'window_start')::timestamptz, updated_at = now()
--citus: WHERE f.programme_id = p_programme AND f.member_id = p_member;
    IF p_add_day THEN
        INSERT INTO member_activity_days AS d (programme_id, member_id, day, orders, spend, qualifying_points)
        VALUES (p_programme, p_member, p_day, 1, p_spend, 0)
        ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
            orders = d.orders + excluded.orders, spend = d.spend + excluded.spend;
    END IF;
    INSERT INTO earning_rule_usage (programme_id, member_id, rule_id, period, period_start, points) --@plain
    SELECT p_programme, p_member, (u->>0)::bigint, u->>1, (u->>2)::date, 0 --@plain
    FROM jsonb_array_elements(p_usage) u --@plain
    ORDER BY 3, 4, 5 --@plain
    ON CONFLICT (programme_id, member_id, rule_id, period, period_start) DO NOTHING; --@plain
--citus: FOR u IN SELECT value FROM jsonb_array_elements(p_usage) ORDER BY (value->>0)::bigint, value->>1, (value->>2)::date LOOP
--citus:     INSERT INTO earning_rule_usage (programme_id, member_id, rule_id, period, period_start, points)
--citus:     VALUES (p_programme, p_member, (u->>0)::bigint, u->>1, (u->>2)::date, 0)
--citus:     ON CONFLICT (programme_id, member_id, rule_id, period, period_start) DO NOTHING;
--citus: END LOOP;

    SELECT a.finished, a.results INTO v_finished, results
    FROM activity_event_apply(p_programme, p_member, v_row, p_day, p_amount, p_earns, p_tier, p_tier_new,
                              p_history, p_events, p_outcome, p_response) a;
    IF NOT v_finished THEN
        RAISE EXCEPTION 'the ledger did not pay every earn as planned' USING ERRCODE = 'LYTXN';
    END IF;
END $$;

-- On Citus an event's write runs on its member's worker, delegated by the member's id (which is
-- its distribution key there): every statement above is filtered by it.
--citus: SELECT create_distributed_function('activity_event_write(bigint, bigint, int, bigint, bigint, jsonb, jsonb, date, bigint, boolean, jsonb, bigint, jsonb, jsonb, boolean, jsonb, jsonb, jsonb, jsonb)', 'p_member', colocate_with := 'members');
