-- Group commit: many single postings in one call and one commit (ledger/group_commit.py).
--
-- p_ops is a JSON array of {"f": function name, "a": [its arguments, in order]}; bytea
-- arguments come base64-encoded, timestamps as ISO 8601 text. Each operation runs in its own
-- subtransaction: a failing one rolls back only itself and reports its error, its neighbours
-- go on. The answer is one row per operation, in the order given.
--
-- Errors that are not the ledger's own (LY000) are reported too, with their SQLSTATE, and the
-- caller runs that operation again on its own, where it behaves exactly as a single call. A
-- cancelled statement (statement timeout) is not caught by WHEN OTHERS: it fails the whole
-- call, and nothing of the batch commits.
--
-- The calls are static, one per posting function, not dynamic SQL: the plans are cached with
-- the function, and nothing in p_ops can choose what runs beyond the names listed here.
--
-- Besides the postings, a member event's final write, activity_event_write
-- (activity/sql/activity_events_v1.sql, created after this file: PL/pgSQL resolves the name
-- when the call first runs), answers its results as op_body (null when replayed). Its refusals
-- (LYSTL: a stale plan; LYTXN: the ledger did not pay as planned) come back as its errors and
-- roll back only its own block. Its jsonb arguments come as JSON values; a JSON null is SQL
-- NULL to it.
CREATE OR REPLACE FUNCTION ledger_post_batch(p_ops jsonb)
RETURNS TABLE (op_replayed boolean, op_body text, op_sqlstate text, op_message text, op_detail text)
LANGUAGE plpgsql AS $$
DECLARE
    op jsonb;
    a jsonb;
    r record;
BEGIN
    -- One shard of each sharded account for the whole batch (see ledger_shard); 720720 is a
    -- multiple of every shard count up to 16, so each shard is as likely.
    PERFORM set_config('loyalty.batch_shard', floor(random() * 720720)::int::text, true);
    FOR op IN SELECT value FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS t(value, n) ORDER BY n LOOP
        a := op->'a';
        op_replayed := NULL;
        op_body := NULL;
        op_sqlstate := NULL;
        op_message := NULL;
        op_detail := NULL;
        BEGIN
            CASE op->>'f'
            WHEN 'ledger_earn' THEN
                SELECT * INTO r FROM ledger_earn(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), a->>3, a->>4, (a->>5)::bigint,
                    (a->>6)::boolean, a->>7, a->>8, (a->>9)::timestamptz, (a->>10)::timestamptz,
                    (a->>11)::jsonb, a->>12);
            WHEN 'ledger_spend' THEN
                SELECT * INTO r FROM ledger_spend(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), a->>3, (a->>4)::bigint, a->>5, a->>6,
                    (a->>7)::jsonb, a->>8);
            WHEN 'ledger_hold' THEN
                SELECT * INTO r FROM ledger_hold(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), a->>3, (a->>4)::bigint,
                    (a->>5)::timestamptz, a->>6, a->>7);
            WHEN 'ledger_capture' THEN
                SELECT * INTO r FROM ledger_capture(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), (a->>3)::bigint, (a->>4)::bigint, a->>5);
            WHEN 'ledger_void' THEN
                SELECT * INTO r FROM ledger_void(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), (a->>3)::bigint, a->>4);
            WHEN 'ledger_clawback' THEN
                SELECT * INTO r FROM ledger_clawback(
                    (a->>0)::bigint, a->>1, decode(a->>2, 'base64'), a->>3, a->>4, (a->>5)::bigint, a->>6,
                    a->>7);
            WHEN 'activity_event_write' THEN
                SELECT w.replayed, w.results AS body INTO r FROM activity_event_write(
                    (a->>0)::bigint, (a->>1)::bigint, (a->>2)::int, (a->>3)::bigint, (a->>4)::bigint,
                    nullif(a->5, 'null'), nullif(a->6, 'null'), (a->>7)::date, (a->>8)::bigint,
                    (a->>9)::boolean, nullif(a->10, 'null'), (a->>11)::bigint, nullif(a->12, 'null'),
                    nullif(a->13, 'null'), (a->>14)::boolean, nullif(a->15, 'null'), nullif(a->16, 'null'),
                    nullif(a->17, 'null'), nullif(a->18, 'null')) w;
            ELSE
                RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'not a batchable posting function: '
                    || coalesce(op->>'f', 'null');
            END CASE;
            op_replayed := r.replayed;
            op_body := r.body::text;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS op_sqlstate = RETURNED_SQLSTATE, op_message = MESSAGE_TEXT,
                                    op_detail = PG_EXCEPTION_DETAIL;
        END;
        RETURN NEXT;
    END LOOP;
END $$;

-- Group commit on Citus (docs/group-commit.md, "On Citus"): a batch whose operations all run
-- under members of one shard, delegated by p_route (that shard's anchor, or any member key of
-- the batch), so that the whole batch runs on the shard's worker as one single-shard
-- transaction. Each operation's key (its member's, or its hold's id for a capture or void)
-- must fall in p_route's shard: otherwise the caller's shard map is stale, and the call
-- refuses (LY003) before it writes anything. Each posting routes itself (ledger_route), so
-- its budget and sink shards are those beside its member; an earn that needs more than the
-- shard beside it reports LY002 as its own error and the caller sends it again alone.
-- On a single node it is ledger_post_batch itself (and the API does not call it).
CREATE OR REPLACE FUNCTION ledger_post_batch_routed(p_route bigint, p_ops jsonb)
RETURNS TABLE (op_replayed boolean, op_body text, op_sqlstate text, op_message text, op_detail text)
LANGUAGE plpgsql AS $$
--citus: DECLARE
--citus:     v_shard bigint := get_shard_id_for_distribution_column('members', p_route);
--citus:     op jsonb;
--citus:     v_key bigint;
BEGIN
--citus: FOR op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
--citus:     v_key := CASE
--citus:         WHEN op->>'f' IN ('ledger_earn', 'ledger_spend', 'ledger_hold', 'ledger_clawback')
--citus:             THEN loyalty_member_key((op->'a'->>0)::bigint, op->'a'->>3)
--citus:         WHEN op->>'f' IN ('ledger_capture', 'ledger_void') THEN (op->'a'->>3)::bigint
--citus:     END;
--citus:     IF v_key IS NULL THEN
--citus:         RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'not a posting routed by its member: '
--citus:             || coalesce(op->>'f', 'null');
--citus:     END IF;
--citus:     IF get_shard_id_for_distribution_column('members', v_key) <> v_shard THEN
--citus:         RAISE EXCEPTION USING ERRCODE = 'LY003', MESSAGE = 'stale_shard_map';
--citus:     END IF;
--citus: END LOOP;
    RETURN QUERY SELECT * FROM ledger_post_batch(p_ops);
END $$;
--citus: SELECT create_distributed_function('ledger_post_batch_routed(bigint, jsonb)', 'p_route', colocate_with := 'members');
