-- The posting engine of the points ledger, version 1.
--
-- Every write of the ledger is one call of one of these functions, so that an operation is a
-- single round trip and a single database transaction. The rules they keep:
--   * each transaction's entries sum to zero; each entry changes exactly one balance row;
--   * locks are taken in one global order: per-member budget usage rows, budget shards
--     (ascending), member balance rows (ascending account id), sink shards, holds are locked
--     before their member;
--   * a member's lots are only read or written while that member's balance row is locked;
--   * business failures raise SQLSTATE 'LY000' with MESSAGE = a code and DETAIL = JSON, and
--     so roll back everything the call did (the idempotency claim included).
-- docs/ledger.md explains the chart of accounts and the buckets (0 available, 1 pending, 2 held).
--
-- This file is a repeatable migration (loyalty.sql_files): it runs again on every database
-- whose copy of it is older, so each statement must be safe on any earlier version. A function
-- whose result type or arguments change needs its old form dropped below.

-- ledger_earn and ledger_spend gained p_member_key (the member's shard on Citus).
DROP FUNCTION IF EXISTS ledger_earn(bigint, text, bytea, text, text, bigint, boolean, text, text, timestamptz, timestamptz, jsonb, text);
DROP FUNCTION IF EXISTS ledger_spend(bigint, text, bytea, text, bigint, text, text, jsonb, text);
DROP FUNCTION IF EXISTS ledger_hold(bigint, text, bytea, text, bigint, timestamptz, text, text);
DROP FUNCTION IF EXISTS ledger_clawback(bigint, text, bytea, text, text, bigint, text, text);
-- ledger_credit_member_available gained p_member (the balance row's shard on Citus).
DROP FUNCTION IF EXISTS ledger_credit_member_available(bigint, bigint, bigint);

-- ledger_expire_member_now returned void before it returned the points it expired.
DO $$
BEGIN
    IF (SELECT prorettype FROM pg_proc
        WHERE oid = to_regprocedure('ledger_expire_member_now(bigint, bigint, bigint)')) = 'void'::regtype THEN
        DROP FUNCTION ledger_expire_member_now(bigint, bigint, bigint);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION loyalty_ts(p_ts timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    -- RFC 3339 in UTC with a 'Z', as msgspec writes datetimes: one format across the API.
    SELECT to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
$$;

CREATE OR REPLACE FUNCTION loyalty_fail(p_code text, p_detail jsonb DEFAULT '{}'::jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'LY000', MESSAGE = p_code, DETAIL = p_detail::text;
END $$;

-- On Citus (docs/scaling.md, migration 0021) a member's id is this hash of its programme and
-- external id, so that a caller can name the member's shard before it reads anything
-- (loyalty.distribution.member_key computes the same in Python). Unused on a single node.
CREATE OR REPLACE FUNCTION loyalty_member_key(p_programme bigint, p_external_id text)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT ('x' || left(md5(p_programme::text || '/' || p_external_id), 16))::bit(64)::bigint
           & 9223372036854775807
$$;

-- On Citus, every row that a posting writes sits on its member's shard. ledger_route names the
-- member for the rest of the transaction: ledger_owner() is the default owner (member_id) of
-- the ledger rows that have no member of their own (entries, idempotency keys, the budget and
-- sink shard rows are owned by the anchor of a shard), and loyalty.batch_shard makes
-- ledger_shard pick the budget and sink shards that sit beside the member. Never called on a
-- single node, where these tables have no owner column.
CREATE OR REPLACE FUNCTION ledger_route(p_member bigint)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_index int;
BEGIN
    SELECT shard_index INTO v_index FROM ledger_anchors
    WHERE shardid = get_shard_id_for_distribution_column('members', p_member);
    PERFORM set_config('loyalty.owner', p_member::text, true);
    PERFORM set_config('loyalty.batch_shard', v_index::text, true);
    RETURN v_index;
END $$;

-- The owner of rows written now: the routed member, else the anchor of shard 0 (a programme's
-- own postings: budget top-ups, moves, sweeps). Citus only.
CREATE OR REPLACE FUNCTION ledger_owner()
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_owner bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
BEGIN
    -- A routed posting reads no table here: on its member's node that would be a nested query.
    IF v_owner IS NOT NULL THEN
        RETURN v_owner;
    END IF;
    RETURN (SELECT anchor FROM ledger_anchors WHERE shard_index = 0);
END $$;

-- The pseudo-member that owns shard p_shard of every budget and sink. Citus only.
CREATE OR REPLACE FUNCTION ledger_anchor(p_shard int)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT anchor FROM ledger_anchors WHERE shard_index = p_shard);
END $$;

-- Locks every shard row of the given (sharded, system) accounts, in account and shard order.
-- On Citus the shards sit on different nodes and a multi-shard SELECT cannot lock, so there
-- they are locked one by one, in the same order: a budget's top-up, move, sweep or close is a
-- distributed transaction.
CREATE OR REPLACE FUNCTION ledger_lock_account_shards(p_programme bigint, p_accounts bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM 1 FROM account_balances --@plain
    WHERE programme_id = p_programme AND account_id = ANY (p_accounts) ORDER BY account_id, shard FOR UPDATE; --@plain
--citus: -- One statement that writes nothing locks every row, on every node at once (Citus's
--citus: -- distributed deadlock detection settles two such statements that meet).
--citus: UPDATE account_balances SET available = available
--citus: WHERE programme_id = p_programme AND account_id = ANY (p_accounts);
END $$;

-- Claims an idempotency key. NULL: the caller goes on and must store its response with
-- ledger_store_key. Otherwise the stored response of the first call with that key. A
-- concurrent first call holds the key's index entry until it ends, so a duplicate waits here
-- and then sees its committed response (or claims the key itself if the first call failed).
CREATE OR REPLACE FUNCTION ledger_claim_key(p_programme bigint, p_key text, p_fingerprint bytea)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
    v_response jsonb;
    v_owner bigint;
BEGIN
    IF p_key IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO idempotency_keys (programme_id, key, fingerprint)
    VALUES (p_programme, p_key, p_fingerprint)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
--citus: v_owner := ledger_owner();
    SELECT fingerprint, response INTO v_fingerprint, v_response
    FROM idempotency_keys WHERE programme_id = p_programme AND key = p_key
--citus:   AND member_id = v_owner
    ;
    IF v_fingerprint <> p_fingerprint THEN
        PERFORM loyalty_fail('idempotency_key_reused', jsonb_build_object('key', p_key));
    END IF;
    RETURN v_response;
END $$;

CREATE OR REPLACE FUNCTION ledger_store_key(p_programme bigint, p_key text, p_status int, p_response jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_owner bigint;
BEGIN
--citus: v_owner := ledger_owner();
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys SET response = p_response, status_code = p_status
        WHERE programme_id = p_programme AND key = p_key
--citus:   AND member_id = v_owner
        ;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION ledger_entry(
    p_programme bigint, p_txn bigint, p_seq int, p_account bigint, p_shard int, p_bucket int, p_amount bigint
) RETURNS void LANGUAGE sql AS $$ --@plain
    INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount) --@plain
    SELECT p_programme, p_txn, p_seq, p_account, p_shard, p_bucket, p_amount WHERE p_amount <> 0; --@plain
$$; --@plain
--citus: ) RETURNS void LANGUAGE plpgsql AS $$
--citus: BEGIN
--citus:     IF p_amount <> 0 THEN
--citus:         INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
--citus:         VALUES (p_programme, p_txn, p_seq, p_account, p_shard, p_bucket, p_amount);
--citus:     END IF;
--citus: END
--citus: $$;

CREATE OR REPLACE FUNCTION ledger_balance_json(p_programme bigint, p_account bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$ --@plain
    SELECT jsonb_build_object('available', available, 'pending', pending, 'held', held) --@plain
    FROM account_balances WHERE programme_id = p_programme AND account_id = p_account AND shard = 0; --@plain
$$; --@plain
--citus: RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
--citus: DECLARE
--citus:     v_routed bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
--citus: BEGIN
--citus:     -- Inside a routed posting the balance row is its member's: read on that shard alone.
--citus:     IF v_routed IS NOT NULL THEN
--citus:         RETURN (SELECT jsonb_build_object('available', available, 'pending', pending, 'held', held)
--citus:                 FROM account_balances WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:                   AND member_id = v_routed);
--citus:     END IF;
--citus:     RETURN (SELECT jsonb_build_object('available', available, 'pending', pending, 'held', held)
--citus:             FROM account_balances WHERE programme_id = p_programme AND account_id = p_account AND shard = 0);
--citus: END
--citus: $$;

CREATE OR REPLACE FUNCTION ledger_member(p_programme bigint, p_external_id text, OUT member_id bigint, OUT account_id bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_key bigint;
BEGIN
--citus: v_key := loyalty_member_key(p_programme, p_external_id);
    SELECT m.id, m.account_id INTO member_id, account_id
    FROM members m WHERE m.programme_id = p_programme AND m.external_id = p_external_id
--citus:   AND m.id = v_key
    ;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('member_not_found', jsonb_build_object('member_id', p_external_id));
    END IF;
END $$;

-- The member, who must be active to earn, spend, hold or transfer; refunds, adjustments and
-- the worker's jobs still reach suspended and closed members.
CREATE OR REPLACE FUNCTION ledger_active_member(p_programme bigint, p_external_id text, OUT member_id bigint, OUT account_id bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_status text;
    v_key bigint;
BEGIN
--citus: v_key := loyalty_member_key(p_programme, p_external_id);
    SELECT m.id, m.account_id, m.status INTO member_id, account_id, v_status
    FROM members m WHERE m.programme_id = p_programme AND m.external_id = p_external_id
--citus:   AND m.id = v_key
    ;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('member_not_found', jsonb_build_object('member_id', p_external_id));
    END IF;
    IF v_status <> 'active' THEN
        PERFORM loyalty_fail('member_not_active', jsonb_build_object('member_id', p_external_id, 'member_status', v_status));
    END IF;
END $$;

CREATE OR REPLACE FUNCTION ledger_system_account(p_programme bigint, p_kind text)
RETURNS TABLE (account_id bigint, shards int) LANGUAGE sql STABLE AS $$ --@plain
    SELECT id, shards FROM accounts WHERE programme_id = p_programme AND kind = p_kind; --@plain
$$; --@plain
--citus: RETURNS TABLE (account_id bigint, shards int) LANGUAGE plpgsql STABLE AS $$
--citus: BEGIN
--citus:     RETURN QUERY
--citus:     SELECT a.id, a.shards::int FROM accounts a WHERE a.programme_id = p_programme AND a.kind = p_kind;
--citus: END
--citus: $$;

-- The shard of a sharded account that a write uses: a random one, so that concurrent writers
-- spread over the shards. Inside a group-commit batch (ledger_post_batch sets
-- loyalty.batch_shard for its transaction) every posting of the batch takes the same one, so a
-- batch holds a single shard of each account rather than most of them, and two batches meet on
-- an account only when they drew the same shard.
CREATE OR REPLACE FUNCTION ledger_shard(p_shards int)
RETURNS int LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(nullif(current_setting('loyalty.batch_shard', true), '')::int % p_shards,
                    floor(random() * p_shards)::int)
$$;

-- Credits a sink (redemption, breakage, adjustments, funding) on a random shard: sinks have no
-- floor, so any shard will do and concurrent writers rarely meet.
CREATE OR REPLACE FUNCTION ledger_credit_sink(p_programme bigint, p_txn bigint, p_seq int, p_kind text, p_amount bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_shards int;
    v_shard int;
    v_anchor bigint;
BEGIN
    IF p_amount = 0 THEN
        RETURN;
    END IF;
    SELECT a.account_id, a.shards INTO v_account, v_shards FROM ledger_system_account(p_programme, p_kind) a;
    v_shard := ledger_shard(v_shards);
--citus: v_anchor := ledger_anchor(v_shard);
    UPDATE account_balances SET available = available + p_amount
    WHERE programme_id = p_programme AND account_id = v_account AND shard = v_shard
--citus:   AND member_id = v_anchor
    ;
    PERFORM ledger_entry(p_programme, p_txn, p_seq, v_account, v_shard, 0, p_amount);
END $$;

-- Takes up to p_amount points from a budget (a sharded account with floor 0) and writes the
-- budget's legs of transaction p_txn from entry p_seq on. Fast path: one random shard that
-- covers the amount. Slow path: lock every shard in order, take what is asked (or what is left,
-- when p_partial), and spread the rest evenly again so that the fast path works afterwards.
-- Returns the points taken and the next free entry number.
CREATE OR REPLACE FUNCTION ledger_take_from_budget(
    p_programme bigint, p_account bigint, p_shards int, p_amount bigint, p_partial boolean,
    p_txn bigint, p_seq int, OUT taken bigint, OUT next_seq int
) LANGUAGE plpgsql AS $$
DECLARE
    v_shard int := ledger_shard(p_shards);
    v_anchor bigint;
    v_total bigint;
    v_after bigint;
    v_target bigint;
    r record;
BEGIN
    next_seq := p_seq;
--citus: v_anchor := ledger_anchor(v_shard);
    -- An UPDATE ... WHERE available >= n that waited for a busy shard keeps the row locked even
    -- when its re-check then fails; the slow path would lock the other shards around it, out of
    -- order, and deadlock with another slow path. A miss therefore rolls the block back.
    BEGIN
        UPDATE account_balances SET available = available - p_amount
        WHERE programme_id = p_programme AND account_id = p_account AND shard = v_shard AND available >= p_amount
--citus:   AND member_id = v_anchor
        ;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LY001';
        END IF;
    EXCEPTION WHEN SQLSTATE 'LY001' THEN
        v_shard := NULL;
    END;
    IF v_shard IS NOT NULL THEN
        taken := p_amount;
        PERFORM ledger_entry(p_programme, p_txn, next_seq, p_account, v_shard, 0, -p_amount);
        next_seq := next_seq + 1;
        RETURN;
    END IF;

    -- On Citus this is the one distributed transaction an earn may become. A call delegated to
    -- its member's node cannot reach the other nodes' shards: it gives up (LY002, nothing
    -- written) and the caller sends it again through the coordinator.
--citus: IF NOT citus_is_coordinator() THEN
--citus:     RAISE EXCEPTION USING ERRCODE = 'LY002', MESSAGE = 'budget_shard_short';
--citus: END IF;
    PERFORM ledger_lock_account_shards(p_programme, ARRAY[p_account]);
    SELECT coalesce(sum(available), 0) INTO v_total
    FROM account_balances WHERE programme_id = p_programme AND account_id = p_account;
    IF v_total < p_amount AND NOT (p_partial AND v_total > 0) THEN
        PERFORM loyalty_fail('budget_exhausted', jsonb_build_object('remaining', v_total, 'requested', p_amount));
    END IF;
    taken := least(v_total, p_amount);
    v_after := v_total - taken;
    FOR r IN SELECT shard, available FROM account_balances
             WHERE programme_id = p_programme AND account_id = p_account ORDER BY shard LOOP
        v_target := v_after / p_shards + CASE WHEN r.shard < v_after % p_shards THEN 1 ELSE 0 END;
        IF v_target <> r.available THEN
            UPDATE account_balances SET available = v_target
            WHERE programme_id = p_programme AND account_id = p_account AND shard = r.shard;
            PERFORM ledger_entry(p_programme, p_txn, next_seq, p_account, r.shard, 0, v_target - r.available);
            next_seq := next_seq + 1;
        END IF;
    END LOOP;
END $$;

-- Adds points to a sharded account (a budget), spread evenly over its shards.
CREATE OR REPLACE FUNCTION ledger_spread_into(
    p_programme bigint, p_account bigint, p_shards int, p_amount bigint, p_txn bigint, p_seq int
) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_part bigint;
    v_seq int := p_seq;
    v_anchor bigint;
    v_routed int;
BEGIN
    -- Citus: inside a routed posting (a refund) the points go back to the shard beside the member.
--citus: IF nullif(current_setting('loyalty.owner', true), '') IS NOT NULL THEN
--citus:     v_routed := ledger_shard(p_shards);
--citus:     v_anchor := ledger_anchor(v_routed);
--citus:     UPDATE account_balances SET available = available + p_amount
--citus:     WHERE programme_id = p_programme AND account_id = p_account AND shard = v_routed AND member_id = v_anchor;
--citus:     PERFORM ledger_entry(p_programme, p_txn, v_seq, p_account, v_routed, 0, p_amount);
--citus:     RETURN v_seq + 1;
--citus: END IF;
    -- Citus, outside a posting (a top-up): one statement for the shards and one for the entries,
    -- not two per shard, each a round trip to a node.
--citus: UPDATE account_balances SET available = available + p_amount / p_shards
--citus:     + CASE WHEN shard < p_amount % p_shards THEN 1 ELSE 0 END
--citus: WHERE programme_id = p_programme AND account_id = p_account AND shard < p_shards
--citus:   AND (p_amount / p_shards > 0 OR shard < p_amount % p_shards);
--citus: INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
--citus: SELECT p_programme, p_txn, p_seq + g.i, p_account, g.i, 0,
--citus:        p_amount / p_shards + CASE WHEN g.i < p_amount % p_shards THEN 1 ELSE 0 END
--citus: FROM generate_series(0, p_shards - 1) AS g(i)
--citus: WHERE p_amount / p_shards > 0 OR g.i < p_amount % p_shards;
--citus: RETURN p_seq + (SELECT count(*) FROM generate_series(0, p_shards - 1) AS g(i)
--citus:                 WHERE p_amount / p_shards > 0 OR g.i < p_amount % p_shards)::int;
    FOR i IN 0 .. p_shards - 1 LOOP
        v_part := p_amount / p_shards + CASE WHEN i < p_amount % p_shards THEN 1 ELSE 0 END;
        IF v_part <> 0 THEN
--citus:     v_anchor := ledger_anchor(i);
            UPDATE account_balances SET available = available + v_part
            WHERE programme_id = p_programme AND account_id = p_account AND shard = i
--citus:       AND member_id = v_anchor
            ;
            PERFORM ledger_entry(p_programme, p_txn, v_seq, p_account, i, 0, v_part);
            v_seq := v_seq + 1;
        END IF;
    END LOOP;
    RETURN v_seq;
END $$;

-- Consumes p_amount points of a member's vested lots, soonest-expiring first (lots that never
-- expire last), recording each take in lot_movements. The caller holds the member's balance
-- row. Returns the money cost of the points taken.
CREATE OR REPLACE FUNCTION ledger_take_lots(
    p_programme bigint, p_member bigint, p_amount bigint, p_txn bigint, p_hold bigint DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := p_amount;
    v_take bigint;
    v_cost bigint := 0;
    r record;
BEGIN
    IF p_amount <= 0 THEN
        RETURN 0;
    END IF;
    FOR r IN SELECT id, remaining, unit_cost_micros FROM lots
             WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND vested
             ORDER BY expires_at NULLS LAST, id LOOP
        v_take := least(r.remaining, v_left);
        UPDATE lots SET remaining = remaining - v_take
        WHERE programme_id = p_programme AND member_id = p_member AND id = r.id;
        INSERT INTO lot_movements (programme_id, member_id, txn_id, lot_id, amount, hold_id)
        VALUES (p_programme, p_member, p_txn, r.id, v_take, p_hold);
        v_cost := v_cost + v_take * r.unit_cost_micros;
        v_left := v_left - v_take;
        EXIT WHEN v_left = 0;
    END LOOP;
    IF v_left > 0 THEN
        PERFORM loyalty_fail('ledger_inconsistent', jsonb_build_object(
            'member', p_member, 'reason', 'lots do not cover the available balance', 'missing', v_left));
    END IF;
    RETURN v_cost;
END $$;

-- Gives p_amount points of an open hold back to the lots it took them from, latest-expiring
-- first, so that what stays captured is what would have expired soonest. Returns their cost.
CREATE OR REPLACE FUNCTION ledger_release_hold_lots(
    p_programme bigint, p_member bigint, p_hold bigint, p_amount bigint, p_txn bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_left bigint := p_amount;
    v_give bigint;
    v_cost bigint := 0;
    r record;
BEGIN
    IF p_amount <= 0 THEN
        RETURN 0;
    END IF;
    FOR r IN SELECT l.id, l.unit_cost_micros, sum(mv.amount) AS held
             FROM lot_movements mv
             JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id
             WHERE mv.programme_id = p_programme AND mv.hold_id = p_hold
--citus:          AND mv.member_id = p_member AND l.member_id = p_member
             GROUP BY l.id, l.unit_cost_micros, l.expires_at
             HAVING sum(mv.amount) > 0
             ORDER BY l.expires_at DESC NULLS FIRST, l.id DESC LOOP
        v_give := least(r.held, v_left);
        UPDATE lots SET remaining = remaining + v_give
        WHERE programme_id = p_programme AND member_id = p_member AND id = r.id;
        INSERT INTO lot_movements (programme_id, member_id, txn_id, lot_id, amount, hold_id)
        VALUES (p_programme, p_member, p_txn, r.id, -v_give, p_hold);
        v_cost := v_cost + v_give * r.unit_cost_micros;
        v_left := v_left - v_give;
        EXIT WHEN v_left = 0;
    END LOOP;
    IF v_left > 0 THEN
        PERFORM loyalty_fail('ledger_inconsistent', jsonb_build_object('hold', p_hold, 'missing', v_left));
    END IF;
    RETURN v_cost;
END $$;

-- Cost of the points an open hold took, as recorded in its lot movements.
CREATE OR REPLACE FUNCTION ledger_hold_cost(p_programme bigint, p_hold bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$ --@plain
    SELECT coalesce(sum(mv.amount * l.unit_cost_micros), 0)::bigint --@plain
    FROM lot_movements mv --@plain
    JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id --@plain
    WHERE mv.programme_id = p_programme AND mv.hold_id = p_hold; --@plain
$$; --@plain
--citus: RETURNS bigint LANGUAGE plpgsql STABLE AS $$
--citus: DECLARE
--citus:     v_routed bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
--citus: BEGIN
--citus:     IF v_routed IS NOT NULL THEN
--citus:         RETURN (SELECT coalesce(sum(mv.amount * l.unit_cost_micros), 0)::bigint
--citus:                 FROM lot_movements mv
--citus:                 JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id
--citus:                 WHERE mv.programme_id = p_programme AND mv.hold_id = p_hold AND mv.member_id = v_routed
--citus:                   AND l.member_id = v_routed);
--citus:     END IF;
--citus:     RETURN (SELECT coalesce(sum(mv.amount * l.unit_cost_micros), 0)::bigint
--citus:             FROM lot_movements mv
--citus:             JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id
--citus:             WHERE mv.programme_id = p_programme AND mv.hold_id = p_hold);
--citus: END
--citus: $$;

CREATE OR REPLACE FUNCTION ledger_txn_json(p_programme bigint, p_txn bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$ --@plain
    SELECT jsonb_build_object( --@plain
        'id', t.id, 'kind', t.kind, 'member_id', m.external_id, 'amount', t.amount, --@plain
        'cost_micros', t.cost_micros, 'reference', t.reference, 'reason', t.reason, --@plain
        'budget', b.code, 'hold_id', t.hold_id, 'reverses_id', t.reverses_id, --@plain
        'counterparty_id', cp.external_id, 'metadata', t.metadata, 'created_at', loyalty_ts(t.created_at)) --@plain
    FROM transactions t --@plain
    LEFT JOIN members m ON m.programme_id = t.programme_id AND m.id = t.member_id --@plain
    LEFT JOIN members cp ON cp.programme_id = t.programme_id AND cp.id = t.counterparty_id --@plain
    LEFT JOIN budgets b ON b.programme_id = t.programme_id AND b.id = t.budget_id --@plain
    WHERE t.programme_id = p_programme AND t.id = p_txn; --@plain
$$; --@plain
--citus: RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
--citus: DECLARE
--citus:     -- Inside a routed posting the transaction is its member's: read on that shard alone.
--citus:     v_owner bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
--citus:     t transactions%ROWTYPE;
--citus:     v_member text;
--citus:     v_counterparty text;
--citus: BEGIN
--citus:     IF v_owner IS NOT NULL THEN
--citus:         SELECT * INTO t FROM transactions WHERE programme_id = p_programme AND id = p_txn AND member_id = v_owner;
--citus:     ELSE
--citus:         SELECT * INTO t FROM transactions WHERE programme_id = p_programme AND id = p_txn;
--citus:     END IF;
--citus:     IF NOT FOUND THEN
--citus:         RETURN NULL;
--citus:     END IF;
--citus:     -- A transfer's counterparty lives on its own shard: each member is read on its own.
--citus:     SELECT external_id INTO v_member FROM members WHERE programme_id = p_programme AND id = t.member_id;
--citus:     IF t.counterparty_id IS NOT NULL THEN
--citus:         SELECT external_id INTO v_counterparty FROM members WHERE programme_id = p_programme AND id = t.counterparty_id;
--citus:     END IF;
--citus:     RETURN jsonb_build_object(
--citus:         'id', t.id, 'kind', t.kind, 'member_id', v_member, 'amount', t.amount,
--citus:         'cost_micros', t.cost_micros, 'reference', t.reference, 'reason', t.reason,
--citus:         'budget', (SELECT code FROM budgets WHERE programme_id = p_programme AND id = t.budget_id),
--citus:         'hold_id', t.hold_id, 'reverses_id', t.reverses_id,
--citus:         'counterparty_id', v_counterparty, 'metadata', t.metadata, 'created_at', loyalty_ts(t.created_at));
--citus: END
--citus: $$;

-- Credits a member's available bucket with points that become a lot (earn, transfer in,
-- adjustment, vesting). A member in debt (negative balance, 'negative' clawback policy) pays it
-- off first: the new lot keeps only what is left after the debt. Returns the lot's remaining.
CREATE OR REPLACE FUNCTION ledger_credit_member_available(
    p_programme bigint, p_member bigint, p_account bigint, p_amount bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_new bigint;
    v_old bigint;
BEGIN
    UPDATE account_balances SET available = available + p_amount
    WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:   AND member_id = p_member
    RETURNING available INTO v_new;
    v_old := v_new - p_amount;
    RETURN p_amount - least(p_amount, greatest(-v_old, 0));
END $$;

---------------------------------------------------------------------------------------------
-- Earn: a budget pays a member.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_earn(
    p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_budget text,
    p_amount bigint, p_partial boolean, p_reference text, p_reason text,
    p_vests_at timestamptz, p_expires_at timestamptz, p_metadata jsonb, p_actor text,
    p_member_key bigint DEFAULT NULL, OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
-- The hottest write of the service: every step is written out here rather than called, and
-- the transaction row is written once, with its final amount.
DECLARE
    v_member bigint;
    v_account bigint;
    v_status text;
    b record;
    v_amount bigint := p_amount;
    v_issued bigint;
    v_txn bigint;
    v_seq int;
    v_remaining bigint;
    v_available bigint;
    v_pending_balance bigint;
    v_held bigint;
    v_pending boolean := p_vests_at IS NOT NULL AND p_vests_at > now();
BEGIN
    replayed := false;
--citus: p_member_key := coalesce(p_member_key, loyalty_member_key(p_programme, p_member));
--citus: PERFORM ledger_route(p_member_key);
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (programme_id, key, fingerprint) VALUES (p_programme, p_key, p_fingerprint)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            body := ledger_claim_key(p_programme, p_key, p_fingerprint);
            replayed := true;
            RETURN;
        END IF;
    END IF;
    SELECT m.id, m.account_id, m.status INTO v_member, v_account, v_status
    FROM members m WHERE m.programme_id = p_programme AND m.external_id = p_member
--citus:   AND m.id = p_member_key
    ;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('member_not_found', jsonb_build_object('member_id', p_member));
    ELSIF v_status <> 'active' THEN
        PERFORM loyalty_fail('member_not_active', jsonb_build_object('member_id', p_member, 'member_status', v_status));
    END IF;
    SELECT bu.id, bu.account_id, bu.status, bu.starts_at, bu.ends_at, bu.per_member_cap, bu.unit_cost_micros, a.shards
    INTO b
    FROM budgets bu JOIN accounts a ON a.programme_id = bu.programme_id AND a.id = bu.account_id
    WHERE bu.programme_id = p_programme AND bu.code = p_budget;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('budget_not_found', jsonb_build_object('budget', p_budget));
    END IF;
    IF b.status <> 'active' THEN
        PERFORM loyalty_fail('budget_closed', jsonb_build_object('budget', p_budget));
    END IF;
    IF (b.starts_at IS NOT NULL AND now() < b.starts_at) OR (b.ends_at IS NOT NULL AND now() >= b.ends_at) THEN
        PERFORM loyalty_fail('budget_not_active', jsonb_build_object(
            'budget', p_budget, 'starts_at', loyalty_ts(b.starts_at), 'ends_at', loyalty_ts(b.ends_at)));
    END IF;

    IF b.per_member_cap IS NOT NULL THEN
        INSERT INTO budget_member_usage (programme_id, budget_id, member_id, issued)
        VALUES (p_programme, b.id, v_member, 0) ON CONFLICT DO NOTHING;
        SELECT issued INTO v_issued FROM budget_member_usage
        WHERE programme_id = p_programme AND budget_id = b.id AND member_id = v_member FOR UPDATE;
        IF v_issued + v_amount > b.per_member_cap THEN
            IF NOT p_partial OR v_issued >= b.per_member_cap THEN
                PERFORM loyalty_fail('member_cap_reached', jsonb_build_object(
                    'budget', p_budget, 'per_member_cap', b.per_member_cap, 'issued', v_issued,
                    'requested', p_amount));
            END IF;
            v_amount := b.per_member_cap - v_issued;
        END IF;
    END IF;

    v_txn := nextval('transactions_id_seq');
    SELECT t.taken, t.next_seq INTO v_amount, v_seq
    FROM ledger_take_from_budget(p_programme, b.account_id, b.shards, v_amount, p_partial, v_txn, 0) t;

    IF b.per_member_cap IS NOT NULL THEN
        UPDATE budget_member_usage SET issued = issued + v_amount
        WHERE programme_id = p_programme AND budget_id = b.id AND member_id = v_member;
    END IF;

    IF v_pending THEN
        UPDATE account_balances SET pending = pending + v_amount
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
        RETURNING available, pending, held INTO v_available, v_pending_balance, v_held;
        v_remaining := v_amount;
    ELSE
        UPDATE account_balances SET available = available + v_amount
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
        RETURNING available, pending, held INTO v_available, v_pending_balance, v_held;
        -- A member in debt pays it off first: the lot keeps only what exceeds the debt.
        v_remaining := v_amount - least(v_amount, greatest(v_amount - v_available, 0));
    END IF;

    INSERT INTO transactions (programme_id, id, kind, member_id, budget_id, reference, amount, cost_micros,
                              reason, metadata, actor)
    VALUES (p_programme, v_txn, 'earn', v_member, b.id, p_reference, v_amount, v_amount * b.unit_cost_micros,
            p_reason, coalesce(p_metadata, '{}'), p_actor);
    INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
    VALUES (p_programme, v_txn, v_seq, v_account, 0, CASE WHEN v_pending THEN 1 ELSE 0 END, v_amount);
    INSERT INTO lots (programme_id, member_id, txn_id, budget_id, amount, remaining, unit_cost_micros,
                      vested, vests_at, expires_at)
    VALUES (p_programme, v_member, v_txn, b.id, v_amount, v_remaining, b.unit_cost_micros,
            NOT v_pending, CASE WHEN v_pending THEN p_vests_at END, p_expires_at);

    body := jsonb_build_object(
        'transaction_id', v_txn, 'kind', 'earn', 'member_id', p_member, 'budget', p_budget,
        'amount', v_amount, 'requested', p_amount, 'status', CASE WHEN v_pending THEN 'pending' ELSE 'available' END,
        'vests_at', CASE WHEN v_pending THEN loyalty_ts(p_vests_at) END, 'expires_at', loyalty_ts(p_expires_at),
        'reference', p_reference, 'cost_micros', v_amount * b.unit_cost_micros,
        'balance', jsonb_build_object('available', v_available, 'pending', v_pending_balance, 'held', v_held));
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys SET response = body, status_code = 201 WHERE programme_id = p_programme AND key = p_key
--citus:   AND member_id = v_member
        ;
    END IF;
END $$;

---------------------------------------------------------------------------------------------
-- Spend: points leave the member's available balance for the redemption sink.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_spend(
    p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_amount bigint,
    p_reference text, p_reason text, p_metadata jsonb, p_actor text,
    p_member_key bigint DEFAULT NULL, OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
    v_account bigint;
    v_status text;
    v_txn bigint;
    v_cost bigint;
    v_available bigint;
    v_pending bigint;
    v_held bigint;
    v_sink bigint;
    v_sink_shards int;
    v_shard int;
    v_anchor bigint;
BEGIN
    replayed := false;
--citus: p_member_key := coalesce(p_member_key, loyalty_member_key(p_programme, p_member));
--citus: PERFORM ledger_route(p_member_key);
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (programme_id, key, fingerprint) VALUES (p_programme, p_key, p_fingerprint)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            body := ledger_claim_key(p_programme, p_key, p_fingerprint);
            replayed := true;
            RETURN;
        END IF;
    END IF;
    SELECT m.id, m.account_id, m.status INTO v_member, v_account, v_status
    FROM members m WHERE m.programme_id = p_programme AND m.external_id = p_member
--citus:   AND m.id = p_member_key
    ;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('member_not_found', jsonb_build_object('member_id', p_member));
    ELSIF v_status <> 'active' THEN
        PERFORM loyalty_fail('member_not_active', jsonb_build_object('member_id', p_member, 'member_status', v_status));
    END IF;
    UPDATE account_balances SET available = available - p_amount
    WHERE programme_id = p_programme AND account_id = v_account AND shard = 0 AND available >= p_amount
--citus:   AND member_id = v_member
    RETURNING available, pending, held INTO v_available, v_pending, v_held;
    IF NOT FOUND THEN
        SELECT available INTO v_available FROM account_balances
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
        ;
        PERFORM loyalty_fail('insufficient_points', jsonb_build_object(
            'member_id', p_member, 'available', v_available, 'requested', p_amount));
    END IF;
    -- Now that the member is locked: points past their expiry are not spendable.
    -- Expired pending lots lower pending, not available, so the balance is re-read.
    IF ledger_expire_before_debit(p_programme, v_member, v_account, p_member, p_amount, v_available) THEN
        SELECT available, pending, held INTO v_available, v_pending, v_held FROM account_balances
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
        ;
    END IF;
    v_txn := nextval('transactions_id_seq');
    v_cost := ledger_take_lots(p_programme, v_member, p_amount, v_txn);
    INSERT INTO transactions (programme_id, id, kind, member_id, reference, amount, cost_micros, reason, metadata, actor)
    VALUES (p_programme, v_txn, 'spend', v_member, p_reference, -p_amount, v_cost, p_reason,
            coalesce(p_metadata, '{}'), p_actor);
    SELECT a.id, a.shards INTO v_sink, v_sink_shards FROM accounts a
    WHERE a.programme_id = p_programme AND a.kind = 'redemption';
    v_shard := ledger_shard(v_sink_shards);
--citus: v_anchor := ledger_anchor(v_shard);
    UPDATE account_balances SET available = available + p_amount
    WHERE programme_id = p_programme AND account_id = v_sink AND shard = v_shard
--citus:   AND member_id = v_anchor
    ;
    INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
    VALUES (p_programme, v_txn, 0, v_account, 0, 0, -p_amount), (p_programme, v_txn, 1, v_sink, v_shard, 0, p_amount);
    body := jsonb_build_object(
        'transaction_id', v_txn, 'kind', 'spend', 'member_id', p_member, 'amount', p_amount,
        'reference', p_reference, 'cost_micros', v_cost,
        'balance', jsonb_build_object('available', v_available, 'pending', v_pending, 'held', v_held));
    IF p_key IS NOT NULL THEN
        UPDATE idempotency_keys SET response = body, status_code = 201 WHERE programme_id = p_programme AND key = p_key
--citus:   AND member_id = v_member
        ;
    END IF;
END $$;

---------------------------------------------------------------------------------------------
-- Holds: reserve (available -> held), capture (held -> redemption, rest back), void.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_hold_json(p_programme bigint, p_hold bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$ --@plain
    SELECT jsonb_build_object( --@plain
        'hold_id', h.id, 'member_id', m.external_id, 'amount', h.amount, 'captured', h.captured, --@plain
        'status', h.status, 'reference', h.reference, 'expires_at', loyalty_ts(h.expires_at), --@plain
        'created_at', loyalty_ts(h.created_at), 'closed_at', loyalty_ts(h.closed_at), --@plain
        'balance', ledger_balance_json(h.programme_id, m.account_id)) --@plain
    FROM holds h JOIN members m ON m.programme_id = h.programme_id AND m.id = h.member_id --@plain
    WHERE h.programme_id = p_programme AND h.id = p_hold; --@plain
$$; --@plain
--citus: RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
--citus: DECLARE
--citus:     v_routed bigint := nullif(current_setting('loyalty.owner', true), '')::bigint;
--citus:     h holds%ROWTYPE;
--citus:     m members%ROWTYPE;
--citus: BEGIN
--citus:     IF v_routed IS NOT NULL THEN
--citus:         SELECT * INTO h FROM holds WHERE programme_id = p_programme AND id = p_hold AND member_id = v_routed;
--citus:     ELSE
--citus:         SELECT * INTO h FROM holds WHERE programme_id = p_programme AND id = p_hold;
--citus:     END IF;
--citus:     IF NOT FOUND THEN
--citus:         RETURN NULL;
--citus:     END IF;
--citus:     SELECT * INTO m FROM members WHERE programme_id = p_programme AND id = h.member_id;
--citus:     RETURN jsonb_build_object(
--citus:         'hold_id', h.id, 'member_id', m.external_id, 'amount', h.amount, 'captured', h.captured,
--citus:         'status', h.status, 'reference', h.reference, 'expires_at', loyalty_ts(h.expires_at),
--citus:         'created_at', loyalty_ts(h.created_at), 'closed_at', loyalty_ts(h.closed_at),
--citus:         'balance', ledger_balance_json(h.programme_id, m.account_id));
--citus: END
--citus: $$;

CREATE OR REPLACE FUNCTION ledger_hold(
    p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_amount bigint,
    p_expires_at timestamptz, p_reference text, p_actor text,
    p_member_key bigint DEFAULT NULL, OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
    v_account bigint;
    v_txn bigint;
    v_hold bigint;
    v_available bigint;
    v_shardid bigint;
BEGIN
--citus: p_member_key := coalesce(p_member_key, loyalty_member_key(p_programme, p_member));
--citus: PERFORM ledger_route(p_member_key);
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    SELECT * INTO v_member, v_account FROM ledger_active_member(p_programme, p_member);
    UPDATE account_balances SET available = available - p_amount, held = held + p_amount
    WHERE programme_id = p_programme AND account_id = v_account AND shard = 0 AND available >= p_amount
--citus:   AND member_id = v_member
    RETURNING available INTO v_available;
    IF NOT FOUND THEN
        SELECT available INTO v_available FROM account_balances
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
        ;
        PERFORM loyalty_fail('insufficient_points', jsonb_build_object(
            'member_id', p_member, 'available', v_available, 'requested', p_amount));
    END IF;
    -- Now that the member is locked: points past their expiry cannot be held.
    PERFORM ledger_expire_before_debit(p_programme, v_member, v_account, p_member, p_amount, v_available);
    INSERT INTO transactions (programme_id, kind, member_id, reference, amount, actor)
    VALUES (p_programme, 'hold', v_member, p_reference, 0, p_actor) RETURNING id INTO v_txn;
    -- Citus: a capture or void names only the hold, so the hold's id is drawn until it hashes
    -- into its member's shard, where hold_routes keeps the member; both calls then run whole
    -- on that node, delegated by the hold id.
--citus: v_shardid := get_shard_id_for_distribution_column('members', v_member);
--citus: LOOP
--citus:     v_hold := nextval(pg_get_serial_sequence('holds', 'id'));
--citus:     EXIT WHEN get_shard_id_for_distribution_column('members', v_hold) = v_shardid;
--citus: END LOOP;
--citus: INSERT INTO hold_routes (id, programme_id, member_id) VALUES (v_hold, p_programme, v_member);
--citus: INSERT INTO holds (programme_id, id, member_id, txn_id, amount, reference, expires_at)
--citus: VALUES (p_programme, v_hold, v_member, v_txn, p_amount, p_reference, p_expires_at);
    INSERT INTO holds (programme_id, member_id, txn_id, amount, reference, expires_at) --@plain
    VALUES (p_programme, v_member, v_txn, p_amount, p_reference, p_expires_at) RETURNING id INTO v_hold; --@plain
    UPDATE transactions SET hold_id = v_hold WHERE programme_id = p_programme AND id = v_txn
--citus:   AND member_id = v_member
    ;
    PERFORM ledger_take_lots(p_programme, v_member, p_amount, v_txn, v_hold);
    PERFORM ledger_entry(p_programme, v_txn, 0, v_account, 0, 0, -p_amount);
    PERFORM ledger_entry(p_programme, v_txn, 1, v_account, 0, 2, p_amount);
    body := ledger_hold_json(p_programme, v_hold);
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

-- Settles an open hold: p_capture points go to the redemption sink, the rest back to the
-- member's lots. p_status is 'captured', 'voided' (p_capture = 0) or 'expired' (the timeout).
CREATE OR REPLACE FUNCTION ledger_settle_hold(
    p_programme bigint, p_hold bigint, p_capture bigint, p_status text, p_actor text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    v_account bigint;
    v_txn bigint;
    v_back bigint;
    v_before bigint;
    v_cost bigint;
    v_member bigint;
BEGIN
--citus: SELECT r.member_id INTO v_member FROM hold_routes r WHERE r.id = p_hold AND r.programme_id = p_programme;
--citus: PERFORM ledger_route(coalesce(v_member, ledger_owner()));
    SELECT * INTO h FROM holds WHERE programme_id = p_programme AND id = p_hold --@plain
--citus: SELECT * INTO h FROM holds WHERE programme_id = p_programme AND id = p_hold AND member_id = v_member
    FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('hold_not_found', jsonb_build_object('hold_id', p_hold));
    END IF;
    IF h.status <> 'open' THEN
        PERFORM loyalty_fail('hold_not_open', jsonb_build_object('hold_id', p_hold, 'status', h.status));
    END IF;
    IF p_capture IS NULL THEN
        p_capture := h.amount;
    END IF;
    IF p_capture < 0 OR p_capture > h.amount THEN
        PERFORM loyalty_fail('capture_exceeds_hold', jsonb_build_object(
            'hold_id', p_hold, 'amount', h.amount, 'requested', p_capture));
    END IF;
    SELECT account_id INTO v_account FROM members WHERE programme_id = p_programme AND id = h.member_id;
    v_back := h.amount - p_capture;
    UPDATE account_balances SET held = held - h.amount, available = available + v_back
    WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = h.member_id
    RETURNING available - v_back INTO v_before;
    INSERT INTO transactions (programme_id, kind, member_id, hold_id, reference, amount, actor)
    -- (A searched CASE: Citus deparses a simple CASE over a parameter wrongly.)
    VALUES (p_programme, CASE WHEN p_status = 'captured' THEN 'capture' WHEN p_status = 'voided' THEN 'void'
                              ELSE 'hold_expiry' END,
            h.member_id, h.id, h.reference, -p_capture, p_actor)
    RETURNING id INTO v_txn;
    -- Cost of what stays captured: what the hold took, less what goes back to the lots.
    v_cost := ledger_hold_cost(p_programme, h.id);
    v_cost := v_cost - ledger_release_hold_lots(p_programme, h.member_id, h.id, v_back, v_txn);
    -- A member who went into debt while the hold was open (a refund of spent points) pays it
    -- off first out of what comes back, as with any other credit.
    PERFORM ledger_take_lots(p_programme, h.member_id, least(v_back, greatest(-v_before, 0)), v_txn);
    UPDATE transactions SET cost_micros = v_cost WHERE programme_id = p_programme AND id = v_txn
--citus:   AND member_id = h.member_id
    ;
    PERFORM ledger_entry(p_programme, v_txn, 0, v_account, 0, 2, -h.amount);
    PERFORM ledger_entry(p_programme, v_txn, 1, v_account, 0, 0, v_back);
    PERFORM ledger_credit_sink(p_programme, v_txn, 2, 'redemption', p_capture);
    UPDATE holds SET status = p_status, captured = p_capture, closed_at = now()
    WHERE programme_id = p_programme AND id = h.id
--citus:   AND member_id = h.member_id
    ;
    RETURN ledger_hold_json(p_programme, h.id) || jsonb_build_object('transaction_id', v_txn, 'cost_micros', v_cost);
END $$;

CREATE OR REPLACE FUNCTION ledger_capture(
    p_programme bigint, p_key text, p_fingerprint bytea, p_hold bigint, p_amount bigint, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
BEGIN
--citus: SELECT r.member_id INTO v_member FROM hold_routes r WHERE r.id = p_hold AND r.programme_id = p_programme;
--citus: IF v_member IS NULL THEN
--citus:     PERFORM loyalty_fail('hold_not_found', jsonb_build_object('hold_id', p_hold));
--citus: END IF;
--citus: PERFORM ledger_route(v_member);
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    body := ledger_settle_hold(p_programme, p_hold, p_amount, 'captured', p_actor);
    PERFORM ledger_store_key(p_programme, p_key, 200, body);
END $$;

CREATE OR REPLACE FUNCTION ledger_void(
    p_programme bigint, p_key text, p_fingerprint bytea, p_hold bigint, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
BEGIN
--citus: SELECT r.member_id INTO v_member FROM hold_routes r WHERE r.id = p_hold AND r.programme_id = p_programme;
--citus: IF v_member IS NULL THEN
--citus:     PERFORM loyalty_fail('hold_not_found', jsonb_build_object('hold_id', p_hold));
--citus: END IF;
--citus: PERFORM ledger_route(v_member);
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    body := ledger_settle_hold(p_programme, p_hold, 0, 'voided', p_actor);
    PERFORM ledger_store_key(p_programme, p_key, 200, body);
END $$;

-- Voids holds whose timeout has passed; a worker calls it until it returns 0.
CREATE OR REPLACE FUNCTION ledger_expire_holds(p_limit int DEFAULT 500)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_count int := 0;
BEGIN
    -- Members in account order, as every job that locks several members does.
    FOR r IN SELECT h.programme_id, h.id FROM holds h
             JOIN members m ON m.programme_id = h.programme_id AND m.id = h.member_id
             WHERE h.status = 'open' AND h.expires_at <= now()
             ORDER BY m.account_id, h.id LIMIT p_limit FOR UPDATE OF h SKIP LOCKED LOOP
        PERFORM ledger_settle_hold(r.programme_id, r.id, 0, 'expired', 'system:hold-timeout');
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

---------------------------------------------------------------------------------------------
-- Clawback: reverse an earn (all or part) by its reference.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_clawback(
    p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_reference text,
    p_amount bigint, p_reason text, p_actor text,
    p_member_key bigint DEFAULT NULL, OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
    v_account bigint;
    v_policy text;
    v_clawable bigint;
    v_want bigint;
    v_left bigint;
    v_portion bigint;
    v_from_lot bigint;
    v_txn bigint;
    v_seq int := 0;
    v_shortfall bigint := 0;
    v_from_other bigint := 0;
    v_debt bigint := 0;
    v_forgiven bigint := 0;
    v_available bigint;
    v_pending_taken bigint := 0;
    v_avail_taken bigint := 0;
    v_cost bigint := 0;
    v_first_txn bigint;
    v_lots bigint[];
    r record;
    bud record;
    v_anchor bigint;
BEGIN
--citus: p_member_key := coalesce(p_member_key, loyalty_member_key(p_programme, p_member));
--citus: PERFORM ledger_route(p_member_key);
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    SELECT * INTO v_member, v_account FROM ledger_member(p_programme, p_member);
    SELECT clawback_policy INTO v_policy FROM programmes WHERE id = p_programme;

    SELECT min(t.id) INTO v_first_txn FROM transactions t
    WHERE t.programme_id = p_programme AND t.reference = p_reference AND t.kind = 'earn' AND t.member_id = v_member;
    IF v_first_txn IS NULL THEN
        PERFORM loyalty_fail('reference_not_found', jsonb_build_object('reference', p_reference, 'member_id', p_member));
    END IF;

    -- Lock order: usage rows and budget shards first (as earns do), then the member. The
    -- reference's lots are fixed here, before any lock: an earn with the same reference that
    -- commits meanwhile is not reversed by this refund (its budget is not locked). What can
    -- still be clawed back is read only under the member's lock, so two refunds of one order
    -- cannot both take it.
    v_lots := ARRAY(
        SELECT l.id FROM transactions t
        JOIN lots l ON l.programme_id = t.programme_id AND l.member_id = t.member_id AND l.txn_id = t.id
        WHERE t.programme_id = p_programme AND t.reference = p_reference AND t.kind = 'earn'
          AND t.member_id = v_member);
    PERFORM 1 FROM budget_member_usage u
    WHERE u.programme_id = p_programme AND u.member_id = v_member
      AND u.budget_id IN (SELECT l.budget_id FROM lots l WHERE l.programme_id = p_programme
                          AND l.member_id = v_member AND l.id = ANY (v_lots))
    ORDER BY u.budget_id FOR UPDATE;
    -- (Citus: the refund goes back into the budget shard beside the member, which alone is
    -- locked, one budget at a time in the same order.)
    PERFORM 1 FROM account_balances ab JOIN budgets b ON b.programme_id = ab.programme_id AND b.account_id = ab.account_id --@plain
    WHERE ab.programme_id = p_programme --@plain
      AND b.id IN (SELECT l.budget_id FROM lots l WHERE l.programme_id = p_programme --@plain
                   AND l.member_id = v_member AND l.id = ANY (v_lots)) --@plain
    ORDER BY ab.account_id, ab.shard FOR UPDATE OF ab; --@plain
--citus: v_anchor := ledger_anchor(current_setting('loyalty.batch_shard')::int);
--citus: FOR r IN SELECT DISTINCT b.account_id FROM budgets b
--citus:          WHERE b.programme_id = p_programme
--citus:            AND b.id = ANY (ARRAY(SELECT l.budget_id FROM lots l WHERE l.programme_id = p_programme
--citus:                                  AND l.member_id = v_member AND l.id = ANY (v_lots)))
--citus:          ORDER BY b.account_id LOOP
--citus:     PERFORM 1 FROM account_balances
--citus:     WHERE programme_id = p_programme AND account_id = r.account_id AND member_id = v_anchor FOR UPDATE;
--citus: END LOOP;
    SELECT available INTO v_available FROM account_balances
    WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
    FOR UPDATE;

    SELECT coalesce(sum(l.amount - l.clawed), 0) INTO v_clawable
    FROM lots l WHERE l.programme_id = p_programme AND l.member_id = v_member AND l.id = ANY (v_lots);
    v_want := coalesce(p_amount, v_clawable);
    IF v_want > v_clawable OR v_want <= 0 THEN
        PERFORM loyalty_fail('clawback_exceeds_earned', jsonb_build_object(
            'reference', p_reference, 'clawable', v_clawable, 'requested', v_want));
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS pg_temp.claw_plan (
        lot_id bigint, budget_id bigint, vested boolean, portion bigint, from_lot bigint, cost bigint
    ) ON COMMIT DROP;
    DELETE FROM pg_temp.claw_plan;
    v_left := v_want;
    FOR r IN SELECT l.id, l.budget_id, l.amount - l.clawed AS open FROM lots l
             WHERE l.programme_id = p_programme AND l.member_id = v_member AND l.id = ANY (v_lots)
               AND l.amount > l.clawed
             ORDER BY l.txn_id DESC, l.id DESC LOOP
        v_portion := least(r.open, v_left);
        INSERT INTO pg_temp.claw_plan VALUES (r.id, r.budget_id, NULL, v_portion, 0, 0);
        v_left := v_left - v_portion;
        EXIT WHEN v_left = 0;
    END LOOP;

    INSERT INTO transactions (programme_id, kind, member_id, reference, reverses_id, amount, reason, actor)
    VALUES (p_programme, 'clawback', v_member, p_reference, v_first_txn, 0, p_reason, p_actor)
    RETURNING id INTO v_txn;

    -- Points still in the earned lots come back from there first.
    -- (Citus would ship the temporary plan to a join with lots over a connection of its own,
    -- making the refund a two-phase commit: there the plan is read into an array first.)
    FOR r IN SELECT p.lot_id, p.portion, l.remaining, l.vested, l.unit_cost_micros --@plain
             FROM pg_temp.claw_plan p JOIN lots l ON l.programme_id = p_programme AND l.member_id = v_member AND l.id = p.lot_id LOOP --@plain
--citus: v_lots := ARRAY(SELECT cp.lot_id FROM pg_temp.claw_plan cp);
--citus: FOR r IN SELECT l.id AS lot_id, 0::bigint AS portion, l.remaining, l.vested, l.unit_cost_micros FROM lots l
--citus:          WHERE l.programme_id = p_programme AND l.member_id = v_member AND l.id = ANY (v_lots) LOOP
--citus:     r.portion := (SELECT cp.portion FROM pg_temp.claw_plan cp WHERE cp.lot_id = r.lot_id);
        v_from_lot := least(r.remaining, r.portion);
        UPDATE lots SET remaining = remaining - v_from_lot, clawed = clawed + r.portion
        WHERE programme_id = p_programme AND member_id = v_member AND id = r.lot_id;
        IF v_from_lot > 0 THEN
            INSERT INTO lot_movements (programme_id, member_id, txn_id, lot_id, amount)
            VALUES (p_programme, v_member, v_txn, r.lot_id, v_from_lot);
        END IF;
        IF r.vested THEN
            v_avail_taken := v_avail_taken + v_from_lot;
        ELSE
            v_pending_taken := v_pending_taken + v_from_lot;
        END IF;
        v_shortfall := v_shortfall + r.portion - v_from_lot;
        UPDATE pg_temp.claw_plan SET vested = r.vested, from_lot = v_from_lot, cost = v_from_lot * r.unit_cost_micros
        WHERE lot_id = r.lot_id;
    END LOOP;

    -- What was already spent: out of the member's other points, then debt or write-off. The
    -- order's own lots were reversed above even if past their expiry; other points that are
    -- past theirs expire now rather than pay for the refund.
    IF v_shortfall > 0 THEN
        IF ledger_expire_member_locked(p_programme, v_member, v_account) > 0 THEN
            SELECT available INTO v_available FROM account_balances
            WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:       AND member_id = v_member
            ;
        END IF;
        v_from_other := least(v_shortfall, greatest(v_available - v_avail_taken, 0));
        v_cost := v_cost + ledger_take_lots(p_programme, v_member, v_from_other, v_txn);
        IF v_policy = 'negative' THEN
            v_debt := v_shortfall - v_from_other;
        ELSE
            v_forgiven := v_shortfall - v_from_other;
        END IF;
    END IF;
    v_avail_taken := v_avail_taken + v_from_other + v_debt;

    UPDATE account_balances SET available = available - v_avail_taken, pending = pending - v_pending_taken
    WHERE programme_id = p_programme AND account_id = v_account AND shard = 0
--citus:   AND member_id = v_member
    ;
    PERFORM ledger_entry(p_programme, v_txn, v_seq, v_account, 0, 0, -v_avail_taken);
    v_seq := v_seq + 1;
    PERFORM ledger_entry(p_programme, v_txn, v_seq, v_account, 0, 1, -v_pending_taken);
    v_seq := v_seq + 1;

    -- Budgets get back what was collected; a written-off shortfall stays issued. The
    -- collected amount beyond the earned lots is attributed to the lots in plan order.
    v_left := v_from_other + v_debt;
    FOR bud IN SELECT p.budget_id, sum(p.from_lot) AS from_lot, sum(p.portion - p.from_lot) AS short, sum(p.cost) AS cost
               FROM pg_temp.claw_plan p GROUP BY p.budget_id ORDER BY p.budget_id LOOP
        v_portion := bud.from_lot + least(bud.short, v_left);
        v_left := v_left - least(bud.short, v_left);
        v_cost := v_cost + bud.cost;
        IF v_portion > 0 THEN
            v_seq := ledger_spread_into(
                p_programme, (SELECT account_id FROM budgets WHERE programme_id = p_programme AND id = bud.budget_id),
                (SELECT a.shards FROM accounts a JOIN budgets b ON b.programme_id = a.programme_id AND b.account_id = a.id
                 WHERE b.programme_id = p_programme AND b.id = bud.budget_id)::int,
                v_portion, v_txn, v_seq);
            UPDATE budget_member_usage SET issued = greatest(issued - v_portion, 0)
            WHERE programme_id = p_programme AND budget_id = bud.budget_id AND member_id = v_member;
        END IF;
    END LOOP;

    -- A closed budget issues nothing more: what came back to it goes on to funding, in a
    -- sweep of its own, as when the budget was closed.
    PERFORM ledger_sweep_budget(p_programme, p.budget_id, 'refund into a closed budget', p_actor)
    FROM (SELECT DISTINCT cp.budget_id FROM pg_temp.claw_plan cp
          JOIN budgets b ON b.programme_id = p_programme AND b.id = cp.budget_id
          WHERE b.status = 'closed' ORDER BY cp.budget_id) p;

    UPDATE transactions SET amount = -(v_avail_taken + v_pending_taken), cost_micros = v_cost,
        metadata = jsonb_build_object('requested', v_want, 'from_earned_lots', v_want - v_shortfall,
                                      'from_other_points', v_from_other, 'debt', v_debt, 'written_off', v_forgiven)
    WHERE programme_id = p_programme AND id = v_txn
--citus:   AND member_id = v_member
    ;
    body := jsonb_build_object(
        'transaction_id', v_txn, 'kind', 'clawback', 'member_id', p_member, 'reference', p_reference,
        'requested', v_want, 'clawed_back', v_avail_taken + v_pending_taken,
        'from_earned_lots', v_want - v_shortfall, 'from_other_points', v_from_other,
        'debt', v_debt, 'written_off', v_forgiven, 'policy', v_policy, 'cost_micros', v_cost,
        'balance', ledger_balance_json(p_programme, v_account));
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

---------------------------------------------------------------------------------------------
-- Adjust: an operator's manual credit (adjustments -> member) or debit (member -> adjustments).
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_adjust(
    p_programme bigint, p_key text, p_fingerprint bytea, p_member text, p_amount bigint,
    p_reason text, p_expires_at timestamptz, p_unit_cost_micros bigint, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_member bigint;
    v_account bigint;
    v_txn bigint;
    v_cost bigint;
    v_remaining bigint;
    v_available bigint;
    v_adj bigint;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    SELECT * INTO v_member, v_account FROM ledger_member(p_programme, p_member);
    SELECT a.account_id INTO v_adj FROM ledger_system_account(p_programme, 'adjustments') a;
    -- The adjustments account is a single cold row: lock it after the member, like a sink.
    INSERT INTO transactions (programme_id, kind, member_id, amount, reason, actor)
    VALUES (p_programme, 'adjust', v_member, p_amount, p_reason, p_actor) RETURNING id INTO v_txn;
    IF p_amount < 0 THEN
        PERFORM ledger_expire_member_now(p_programme, v_member, v_account);
    END IF;
    IF p_amount > 0 THEN
        v_remaining := ledger_credit_member_available(p_programme, v_member, v_account, p_amount);
        INSERT INTO lots (programme_id, member_id, txn_id, amount, remaining, unit_cost_micros, vested, expires_at)
        VALUES (p_programme, v_member, v_txn, p_amount, v_remaining, coalesce(p_unit_cost_micros, 0), true, p_expires_at);
        v_cost := p_amount * coalesce(p_unit_cost_micros, 0);
    ELSE
        UPDATE account_balances SET available = available + p_amount
        WHERE programme_id = p_programme AND account_id = v_account AND shard = 0 AND available >= -p_amount;
        IF NOT FOUND THEN
            SELECT available INTO v_available FROM account_balances
            WHERE programme_id = p_programme AND account_id = v_account AND shard = 0;
            PERFORM loyalty_fail('insufficient_points', jsonb_build_object(
                'member_id', p_member, 'available', v_available, 'requested', -p_amount));
        END IF;
        v_cost := -ledger_take_lots(p_programme, v_member, -p_amount, v_txn);
    END IF;
    UPDATE account_balances SET available = available - p_amount
    WHERE programme_id = p_programme AND account_id = v_adj AND shard = 0;
    PERFORM ledger_entry(p_programme, v_txn, 0, v_account, 0, 0, p_amount);
    PERFORM ledger_entry(p_programme, v_txn, 1, v_adj, 0, 0, -p_amount);
    UPDATE transactions SET cost_micros = v_cost WHERE programme_id = p_programme AND id = v_txn;
    body := jsonb_build_object(
        'transaction_id', v_txn, 'kind', 'adjust', 'member_id', p_member, 'amount', p_amount,
        'reason', p_reason, 'expires_at', loyalty_ts(p_expires_at), 'cost_micros', v_cost,
        'balance', ledger_balance_json(p_programme, v_account));
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

---------------------------------------------------------------------------------------------
-- Transfer between two members: the receiver gets lots with the sender's expiry and cost.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_transfer(
    p_programme bigint, p_key text, p_fingerprint bytea, p_from text, p_to text, p_amount bigint,
    p_reason text, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_from bigint;
    v_from_account bigint;
    v_to bigint;
    v_to_account bigint;
    v_txn bigint;
    v_available bigint;
    v_cost bigint := 0;
    v_credit bigint;
    v_debt_left bigint;
    r record;
BEGIN
    -- Citus: the one distributed write of the hot API (docs/scaling.md). The call is the
    -- sender's: its key, transaction and entries sit on the sender's shard; the receiver's
    -- balance row and lots on the receiver's.
--citus: PERFORM ledger_route(loyalty_member_key(p_programme, p_from));
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    IF NOT (SELECT allow_transfers FROM programmes WHERE id = p_programme) THEN
        PERFORM loyalty_fail('transfers_disabled', '{}'::jsonb);
    END IF;
    SELECT * INTO v_from, v_from_account FROM ledger_active_member(p_programme, p_from);
    SELECT * INTO v_to, v_to_account FROM ledger_active_member(p_programme, p_to);
    IF v_from = v_to THEN
        PERFORM loyalty_fail('same_member', jsonb_build_object('member_id', p_from));
    END IF;
    PERFORM 1 FROM account_balances --@plain
    WHERE programme_id = p_programme AND account_id IN (v_from_account, v_to_account) AND shard = 0 --@plain
    ORDER BY account_id FOR UPDATE; --@plain
--citus: -- A multi-shard SELECT cannot lock: one row at a time, in the same (account) order.
--citus: FOR r IN SELECT x.account_id, x.member_id FROM (VALUES (v_from_account, v_from), (v_to_account, v_to))
--citus:          AS x(account_id, member_id) ORDER BY x.account_id LOOP
--citus:     PERFORM 1 FROM account_balances
--citus:     WHERE programme_id = p_programme AND account_id = r.account_id AND shard = 0 AND member_id = r.member_id
--citus:     FOR UPDATE;
--citus: END LOOP;
    PERFORM ledger_expire_member_now(p_programme, v_from, v_from_account);
    SELECT available INTO v_available FROM account_balances
    WHERE programme_id = p_programme AND account_id = v_from_account AND shard = 0
--citus:   AND member_id = v_from
    ;
    IF v_available < p_amount THEN
        PERFORM loyalty_fail('insufficient_points', jsonb_build_object(
            'member_id', p_from, 'available', v_available, 'requested', p_amount));
    END IF;
    INSERT INTO transactions (programme_id, kind, member_id, counterparty_id, amount, reason, actor)
    VALUES (p_programme, 'transfer', v_from, v_to, -p_amount, p_reason, p_actor) RETURNING id INTO v_txn;
    UPDATE account_balances SET available = available - p_amount
    WHERE programme_id = p_programme AND account_id = v_from_account AND shard = 0
--citus:   AND member_id = v_from
    ;
    PERFORM ledger_take_lots(p_programme, v_from, p_amount, v_txn);
    -- The receiver's debt, if any, is paid off first, out of the lots that expire soonest.
    v_debt_left := p_amount - ledger_credit_member_available(p_programme, v_to, v_to_account, p_amount);
    FOR r IN SELECT l.id, l.budget_id, l.unit_cost_micros, l.expires_at, mv.amount
             FROM lot_movements mv JOIN lots l ON l.programme_id = mv.programme_id AND l.member_id = mv.member_id AND l.id = mv.lot_id
             WHERE mv.programme_id = p_programme AND mv.member_id = v_from AND mv.txn_id = v_txn
             ORDER BY l.expires_at NULLS LAST, l.id LOOP
        v_credit := r.amount - least(r.amount, v_debt_left);
        v_debt_left := v_debt_left - least(r.amount, v_debt_left);
        v_cost := v_cost + r.amount * r.unit_cost_micros;
        INSERT INTO lots (programme_id, member_id, txn_id, budget_id, amount, remaining, unit_cost_micros, vested, expires_at)
        VALUES (p_programme, v_to, v_txn, r.budget_id, r.amount, v_credit, r.unit_cost_micros, true, r.expires_at);
    END LOOP;
    UPDATE transactions SET cost_micros = v_cost WHERE programme_id = p_programme AND id = v_txn
--citus:   AND member_id = v_from
    ;
    PERFORM ledger_entry(p_programme, v_txn, 0, v_from_account, 0, 0, -p_amount);
    PERFORM ledger_entry(p_programme, v_txn, 1, v_to_account, 0, 0, p_amount);
    body := jsonb_build_object(
        'transaction_id', v_txn, 'kind', 'transfer', 'from_member_id', p_from, 'to_member_id', p_to,
        'amount', p_amount, 'cost_micros', v_cost, 'balance', ledger_balance_json(p_programme, v_from_account));
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

---------------------------------------------------------------------------------------------
-- Worker jobs: vesting of pending lots and expiry of lots into breakage.
---------------------------------------------------------------------------------------------
-- Vests one member's pending lots whose return window has closed: one 'vest' transaction
-- (pending -> available, a member's debt paid off first). Returns 1 if anything vested.
CREATE OR REPLACE FUNCTION ledger_vest_member(p_programme bigint, p_member bigint, p_account bigint)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    l record;
    v_txn bigint;
    v_total bigint;
    v_remaining bigint;
BEGIN
    PERFORM 1 FROM account_balances
    WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:   AND member_id = p_member
    FOR UPDATE;
    SELECT sum(remaining) INTO v_total FROM lots
    WHERE programme_id = p_programme AND member_id = p_member AND NOT vested AND vests_at <= now();
    IF v_total IS NULL THEN
        RETURN 0;
    ELSIF v_total = 0 THEN
        -- Wholly clawed back while pending: nothing left to vest.
        UPDATE lots SET vested = true
        WHERE programme_id = p_programme AND member_id = p_member AND NOT vested AND vests_at <= now();
        RETURN 0;
    END IF;
    INSERT INTO transactions (programme_id, kind, member_id, amount, actor)
    VALUES (p_programme, 'vest', p_member, v_total, 'system:vesting') RETURNING id INTO v_txn;
    UPDATE account_balances SET pending = pending - v_total
    WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:   AND member_id = p_member
    ;
    FOR l IN SELECT id, remaining FROM lots
             WHERE programme_id = p_programme AND member_id = p_member AND NOT vested AND vests_at <= now()
             ORDER BY id LOOP
        v_remaining := CASE WHEN l.remaining > 0
            THEN ledger_credit_member_available(p_programme, p_member, p_account, l.remaining) ELSE 0 END;
        UPDATE lots SET vested = true, remaining = v_remaining
        WHERE programme_id = p_programme AND member_id = p_member AND id = l.id;
    END LOOP;
    PERFORM ledger_entry(p_programme, v_txn, 0, p_account, 0, 1, -v_total);
    PERFORM ledger_entry(p_programme, v_txn, 1, p_account, 0, 0, v_total);
    RETURN 1;
END $$;

CREATE OR REPLACE FUNCTION ledger_vest_due(p_limit int DEFAULT 500)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m record;
    v_count int := 0;
BEGIN
    FOR m IN SELECT DISTINCT lo.programme_id, lo.member_id, mb.account_id FROM (
                 SELECT programme_id, member_id FROM lots WHERE NOT vested AND vests_at <= now()
                 ORDER BY vests_at LIMIT p_limit) lo
             JOIN members mb ON mb.programme_id = lo.programme_id AND mb.id = lo.member_id
             ORDER BY mb.account_id LOOP
        v_count := v_count + ledger_vest_member(m.programme_id, m.member_id, m.account_id);
    END LOOP;
    RETURN v_count;
END $$;

-- On Citus the jobs that walk many members cannot lock across shards (a multi-shard
-- FOR UPDATE is refused): the worker lists what is due, then gives each member a transaction
-- of its own through this call, delegated by the member to its node (one shard, no 2PC).
-- p_job: 'vest' or 'expire'. Returns 1 if the member had something done. The same call works
-- on a single node (p_member_key is then the member's id); the batch functions are used there.
CREATE OR REPLACE FUNCTION ledger_member_job(p_job text, p_programme bigint, p_member_key bigint)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
BEGIN
--citus: PERFORM ledger_route(p_member_key);
    SELECT account_id INTO v_account FROM members WHERE programme_id = p_programme AND id = p_member_key;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF p_job = 'vest' THEN
        RETURN ledger_vest_member(p_programme, p_member_key, v_account);
    ELSIF p_job = 'expire' THEN
        RETURN CASE WHEN ledger_expire_member_now(p_programme, p_member_key, v_account) > 0 THEN 1 ELSE 0 END;
    END IF;
    RAISE EXCEPTION 'unknown member job %', p_job;
END $$;

-- One timed-out hold, voided on its member's node (the Citus form of ledger_expire_holds).
-- Returns 0 when the hold was settled or its timeout moved meanwhile.
CREATE OR REPLACE FUNCTION ledger_expire_hold(p_programme bigint, p_hold bigint, p_member_key bigint)
RETURNS int LANGUAGE plpgsql AS $$
BEGIN
--citus: PERFORM ledger_route(p_member_key);
    PERFORM 1 FROM holds
    WHERE programme_id = p_programme AND id = p_hold AND member_id = p_member_key
      AND status = 'open' AND expires_at <= now()
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    PERFORM ledger_settle_hold(p_programme, p_hold, 0, 'expired', 'system:hold-timeout');
    RETURN 1;
END $$;

-- Expires a member's lots that are past their expiry: one 'expire' transaction, the lots'
-- remaining to zero, the member's legs and the breakage leg on shard p_shard. The caller holds
-- the member's balance row and adds the returned points to that breakage shard's balance.
CREATE OR REPLACE FUNCTION ledger_expire_member(
    p_programme bigint, p_member bigint, p_account bigint, p_breakage bigint, p_shard int
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_txn bigint;
    v_avail bigint;
    v_pending bigint;
    v_cost bigint;
BEGIN
    SELECT coalesce(sum(remaining) FILTER (WHERE vested), 0), coalesce(sum(remaining) FILTER (WHERE NOT vested), 0),
           coalesce(sum(remaining * unit_cost_micros), 0)
    INTO v_avail, v_pending, v_cost
    FROM lots WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND expires_at <= now();
    IF v_avail + v_pending = 0 THEN
        RETURN 0;
    END IF;
    INSERT INTO transactions (programme_id, kind, member_id, amount, cost_micros, actor)
    VALUES (p_programme, 'expire', p_member, -(v_avail + v_pending), v_cost, 'system:expiry')
    RETURNING id INTO v_txn;
    INSERT INTO lot_movements (programme_id, member_id, txn_id, lot_id, amount) --@plain
    SELECT programme_id, member_id, v_txn, id, remaining FROM lots --@plain
    WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND expires_at <= now(); --@plain
--citus: -- Citus runs an INSERT ... SELECT as one task per shard: row by row, it stays on the member's.
--citus: FOR r IN SELECT id, remaining FROM lots
--citus:          WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND expires_at <= now() LOOP
--citus:     INSERT INTO lot_movements (programme_id, member_id, txn_id, lot_id, amount)
--citus:     VALUES (p_programme, p_member, v_txn, r.id, r.remaining);
--citus: END LOOP;
    UPDATE lots SET remaining = 0
    WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND expires_at <= now();
    UPDATE account_balances SET available = available - v_avail, pending = pending - v_pending
    WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:   AND member_id = p_member
    ;
    PERFORM ledger_entry(p_programme, v_txn, 0, p_account, 0, 0, -v_avail);
    PERFORM ledger_entry(p_programme, v_txn, 1, p_account, 0, 1, -v_pending);
    PERFORM ledger_entry(p_programme, v_txn, 2, p_breakage, p_shard, 0, v_avail + v_pending);
    RETURN v_avail + v_pending;
END $$;

-- Before a member's points are debited, lots already past their expiry go to breakage, so
-- expired points are never spent even when the expiry job has not run yet.
-- With the member's balance row locked by the caller: lots already past their expiry go to
-- breakage now, so expired points are never spent even when the expiry job has not run yet.
-- Returns the points expired (0 in the common case, after one index probe).
CREATE OR REPLACE FUNCTION ledger_expire_member_locked(p_programme bigint, p_member bigint, p_account bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_breakage bigint;
    v_shards int;
    v_shard int;
    v_expired bigint;
    v_anchor bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM lots WHERE programme_id = p_programme AND member_id = p_member
                   AND remaining > 0 AND expires_at <= now()) THEN
        RETURN 0;
    END IF;
--citus: PERFORM ledger_route(p_member);
    SELECT a.id, a.shards INTO v_breakage, v_shards FROM accounts a
    WHERE a.programme_id = p_programme AND a.kind = 'breakage';
    v_shard := ledger_shard(v_shards);
--citus: v_anchor := ledger_anchor(v_shard);
    v_expired := ledger_expire_member(p_programme, p_member, p_account, v_breakage, v_shard);
    UPDATE account_balances SET available = available + v_expired
    WHERE programme_id = p_programme AND account_id = v_breakage AND shard = v_shard
--citus:   AND member_id = v_anchor
    ;
    RETURN v_expired;
END $$;

-- For a debit that has just locked the member and taken p_amount (leaving p_available):
-- lots past their expiry go to breakage first. If what stays no longer covers the debit, the
-- call is refused before anything expires (a floor of 0 would refuse the expiry itself).
-- True when something expired.
CREATE OR REPLACE FUNCTION ledger_expire_before_debit(
    p_programme bigint, p_member bigint, p_account bigint, p_external_id text, p_amount bigint,
    p_available bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_expiring bigint;
    v_due bigint;
BEGIN
    SELECT coalesce(sum(remaining) FILTER (WHERE vested), 0), count(*) INTO v_expiring, v_due
    FROM lots WHERE programme_id = p_programme AND member_id = p_member AND remaining > 0 AND expires_at <= now();
    IF v_due = 0 THEN
        RETURN false;
    END IF;
    IF p_available - v_expiring < 0 THEN
        PERFORM loyalty_fail('insufficient_points', jsonb_build_object(
            'member_id', p_external_id, 'available', p_available + p_amount - v_expiring, 'requested', p_amount));
    END IF;
    PERFORM ledger_expire_member_locked(p_programme, p_member, p_account);
    RETURN true;
END $$;

-- The same for callers that have not locked the member yet.
CREATE OR REPLACE FUNCTION ledger_expire_member_now(p_programme bigint, p_member bigint, p_account bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM account_balances
    WHERE programme_id = p_programme AND account_id = p_account AND shard = 0
--citus:   AND member_id = p_member
    FOR UPDATE;
    RETURN ledger_expire_member_locked(p_programme, p_member, p_account);
END $$;

-- The expiry job: members in account order, one transaction each, and the breakage shards'
-- balances updated once at the end. Taking a sink row only after every member row keeps the
-- global lock order (members before sinks), so the job cannot deadlock with API calls.
CREATE OR REPLACE FUNCTION ledger_expire_due(p_limit int DEFAULT 500)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    m record;
    v_count int := 0;
    v_breakage bigint;
    v_shards int;
    v_shard int;
    v_expired bigint;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.breakage_credits (
        programme_id bigint, account_id bigint, shard int, amount bigint
    ) ON COMMIT DROP;
    DELETE FROM pg_temp.breakage_credits;
    FOR m IN SELECT DISTINCT lo.programme_id, lo.member_id, mb.account_id FROM (
                 SELECT programme_id, member_id FROM lots WHERE remaining > 0 AND expires_at <= now()
                 ORDER BY expires_at LIMIT p_limit) lo
             JOIN members mb ON mb.programme_id = lo.programme_id AND mb.id = lo.member_id
             ORDER BY mb.account_id LOOP
        PERFORM 1 FROM account_balances
        WHERE programme_id = m.programme_id AND account_id = m.account_id AND shard = 0 FOR UPDATE;
        SELECT a.account_id, a.shards INTO v_breakage, v_shards FROM ledger_system_account(m.programme_id, 'breakage') a;
        v_shard := ledger_shard(v_shards);
        v_expired := ledger_expire_member(m.programme_id, m.member_id, m.account_id, v_breakage, v_shard);
        IF v_expired > 0 THEN
            INSERT INTO pg_temp.breakage_credits VALUES (m.programme_id, v_breakage, v_shard, v_expired);
            v_count := v_count + 1;
        END IF;
    END LOOP;
    UPDATE account_balances ab SET available = ab.available + c.total
    FROM (SELECT programme_id, account_id, shard, sum(amount) AS total FROM pg_temp.breakage_credits
          GROUP BY programme_id, account_id, shard) c
    WHERE ab.programme_id = c.programme_id AND ab.account_id = c.account_id AND ab.shard = c.shard;
    RETURN v_count;
END $$;

---------------------------------------------------------------------------------------------
-- Budgets: create (funding -> budget), top up, move between budgets, close (budget -> funding).
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_budget_json(p_programme bigint, p_budget bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$ --@plain
    SELECT jsonb_build_object( --@plain
        'code', b.code, 'name', b.name, 'status', b.status, 'cap', b.cap, --@plain
        'remaining', r.remaining, 'issued', b.cap - r.remaining, --@plain
        'issued_cost_micros', (b.cap - r.remaining) * b.unit_cost_micros, --@plain
        'unit_cost_micros', b.unit_cost_micros, 'starts_at', loyalty_ts(b.starts_at), 'ends_at', loyalty_ts(b.ends_at), --@plain
        'per_member_cap', b.per_member_cap, 'alert_thresholds', to_jsonb(b.alert_thresholds), --@plain
        'alerts_sent', to_jsonb(b.alerts_sent), 'created_at', loyalty_ts(b.created_at), 'closed_at', loyalty_ts(b.closed_at)) --@plain
    FROM budgets b, --@plain
         LATERAL (SELECT coalesce(sum(available), 0) AS remaining FROM account_balances ab --@plain
                  WHERE ab.programme_id = b.programme_id AND ab.account_id = b.account_id) r --@plain
    WHERE b.programme_id = p_programme AND b.id = p_budget; --@plain
$$; --@plain
--citus: RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
--citus: DECLARE
--citus:     v_remaining bigint;
--citus: BEGIN
--citus:     -- Citus: the budget's shards sit on every node; their sum is read on its own.
--citus:     SELECT coalesce(sum(ab.available), 0) INTO v_remaining FROM account_balances ab
--citus:     JOIN budgets b ON b.programme_id = ab.programme_id AND b.account_id = ab.account_id
--citus:     WHERE b.programme_id = p_programme AND b.id = p_budget;
--citus:     RETURN (
--citus:         SELECT jsonb_build_object(
--citus:             'code', b.code, 'name', b.name, 'status', b.status, 'cap', b.cap,
--citus:             'remaining', v_remaining, 'issued', b.cap - v_remaining,
--citus:             'issued_cost_micros', (b.cap - v_remaining) * b.unit_cost_micros,
--citus:             'unit_cost_micros', b.unit_cost_micros, 'starts_at', loyalty_ts(b.starts_at), 'ends_at', loyalty_ts(b.ends_at),
--citus:             'per_member_cap', b.per_member_cap, 'alert_thresholds', to_jsonb(b.alert_thresholds),
--citus:             'alerts_sent', to_jsonb(b.alerts_sent), 'created_at', loyalty_ts(b.created_at), 'closed_at', loyalty_ts(b.closed_at))
--citus:         FROM budgets b WHERE b.programme_id = p_programme AND b.id = p_budget
--citus:     );
--citus: END
--citus: $$;

CREATE OR REPLACE FUNCTION ledger_fund_budget(
    p_programme bigint, p_budget bigint, p_amount bigint, p_kind text, p_reason text, p_actor text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    v_shards int;
    v_seq int;
    v_txn bigint;
    v_funding bigint;
    v_left bigint;
BEGIN
    SELECT * INTO b FROM budgets WHERE programme_id = p_programme AND id = p_budget;
    -- With the shards locked, a close that committed meanwhile is visible: refuse then.
    PERFORM ledger_lock_account_shards(p_programme, ARRAY[b.account_id]);
    IF (SELECT status FROM budgets WHERE programme_id = p_programme AND id = p_budget) <> 'active' THEN
        PERFORM loyalty_fail('budget_closed', jsonb_build_object('budget', b.code));
    END IF;
    SELECT shards INTO v_shards FROM accounts WHERE programme_id = p_programme AND id = b.account_id;
    SELECT a.account_id INTO v_funding FROM ledger_system_account(p_programme, 'funding') a;
    INSERT INTO transactions (programme_id, kind, budget_id, amount, reason, actor)
    VALUES (p_programme, p_kind, p_budget, p_amount, p_reason, p_actor) RETURNING id INTO v_txn;
    v_seq := ledger_spread_into(p_programme, b.account_id, v_shards, p_amount, v_txn, 0);
    UPDATE account_balances SET available = available - p_amount
    WHERE programme_id = p_programme AND account_id = v_funding AND shard = 0;
    PERFORM ledger_entry(p_programme, v_txn, v_seq, v_funding, 0, 0, -p_amount);
    UPDATE budgets SET cap = cap + p_amount WHERE programme_id = p_programme AND id = p_budget;
    -- A top-up re-arms the alerts whose threshold the budget is now below. (Citus cannot update
    -- a reference table from a query that reads a distributed one: the sum is read first.)
--citus: v_left := (SELECT coalesce(sum(available), 0) FROM account_balances
--citus:            WHERE programme_id = p_programme AND account_id = b.account_id);
    UPDATE budgets bu SET alerts_sent = ARRAY(
        SELECT x FROM unnest(bu.alerts_sent) x
        WHERE (bu.cap - (SELECT coalesce(sum(available), 0) FROM account_balances --@plain
                         WHERE programme_id = p_programme AND account_id = bu.account_id)) * 100 >= x::bigint * bu.cap) --@plain
--citus:     WHERE (bu.cap - v_left) * 100 >= x::bigint * bu.cap)
    WHERE bu.programme_id = p_programme AND bu.id = p_budget AND cardinality(bu.alerts_sent) > 0;
    RETURN v_txn;
END $$;

CREATE OR REPLACE FUNCTION ledger_create_budget(
    p_programme bigint, p_key text, p_fingerprint bytea, p_code text, p_name text, p_cap bigint,
    p_unit_cost_micros bigint, p_starts_at timestamptz, p_ends_at timestamptz, p_per_member_cap bigint,
    p_alert_thresholds int[], p_shards int, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_budget bigint;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    IF EXISTS (SELECT 1 FROM budgets WHERE programme_id = p_programme AND code = p_code) THEN
        PERFORM loyalty_fail('budget_exists', jsonb_build_object('budget', p_code));
    END IF;
    -- Citus: one budget shard beside each member shard, owned by that shard's anchor, so that an
    -- earn takes from the shard on its member's node; the cap is spread over them.
--citus: p_shards := (SELECT count(*) FROM ledger_anchors);
    INSERT INTO accounts (programme_id, kind, shards) VALUES (p_programme, 'budget', p_shards) RETURNING id INTO v_account;
    INSERT INTO account_balances (programme_id, account_id, shard, floor) --@plain
    SELECT p_programme, v_account, s, 0 FROM generate_series(0, p_shards - 1) s; --@plain
--citus: INSERT INTO account_balances (programme_id, account_id, shard, floor, member_id)
--citus: SELECT p_programme, v_account, a.shard_index, 0, a.anchor FROM ledger_anchors a;
    INSERT INTO budgets (programme_id, code, name, account_id, cap, unit_cost_micros, starts_at, ends_at,
                         per_member_cap, alert_thresholds)
    VALUES (p_programme, p_code, coalesce(p_name, ''), v_account, 0, p_unit_cost_micros, p_starts_at, p_ends_at,
            p_per_member_cap, coalesce(p_alert_thresholds, '{}'))
    RETURNING id INTO v_budget;
    IF p_cap > 0 THEN
        PERFORM ledger_fund_budget(p_programme, v_budget, p_cap, 'budget_allocation', 'budget created', p_actor);
    END IF;
    body := ledger_budget_json(p_programme, v_budget);
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

CREATE OR REPLACE FUNCTION ledger_lock_budget(p_programme bigint, p_code text, p_for_write boolean DEFAULT true)
RETURNS budgets LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
BEGIN
    SELECT * INTO b FROM budgets WHERE programme_id = p_programme AND code = p_code;
    IF NOT FOUND THEN
        PERFORM loyalty_fail('budget_not_found', jsonb_build_object('budget', p_code));
    END IF;
    IF p_for_write AND b.status <> 'active' THEN
        PERFORM loyalty_fail('budget_closed', jsonb_build_object('budget', p_code));
    END IF;
    RETURN b;
END $$;

CREATE OR REPLACE FUNCTION ledger_top_up_budget(
    p_programme bigint, p_key text, p_fingerprint bytea, p_code text, p_amount bigint, p_reason text, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    b := ledger_lock_budget(p_programme, p_code);
    PERFORM ledger_fund_budget(p_programme, b.id, p_amount, 'budget_top_up', p_reason, p_actor);
    body := ledger_budget_json(p_programme, b.id);
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

CREATE OR REPLACE FUNCTION ledger_move_budget(
    p_programme bigint, p_key text, p_fingerprint bytea, p_from text, p_to text, p_amount bigint,
    p_reason text, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    bf budgets%ROWTYPE;
    bt budgets%ROWTYPE;
    v_from_shards int;
    v_to_shards int;
    v_txn bigint;
    v_taken bigint;
    v_seq int;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    bf := ledger_lock_budget(p_programme, p_from);
    bt := ledger_lock_budget(p_programme, p_to);
    IF bf.id = bt.id THEN
        PERFORM loyalty_fail('same_budget', jsonb_build_object('budget', p_from));
    END IF;
    SELECT shards INTO v_from_shards FROM accounts WHERE programme_id = p_programme AND id = bf.account_id;
    SELECT shards INTO v_to_shards FROM accounts WHERE programme_id = p_programme AND id = bt.account_id;
    PERFORM ledger_lock_account_shards(p_programme, ARRAY[bf.account_id, bt.account_id]);
    -- Re-read with the shards locked: a close that committed meanwhile is visible now.
    bf := ledger_lock_budget(p_programme, p_from);
    bt := ledger_lock_budget(p_programme, p_to);
    INSERT INTO transactions (programme_id, kind, budget_id, amount, reason, actor, metadata)
    VALUES (p_programme, 'budget_move', bf.id, p_amount, p_reason, p_actor, jsonb_build_object('from', p_from, 'to', p_to))
    RETURNING id INTO v_txn;
    SELECT t.taken, t.next_seq INTO v_taken, v_seq
    FROM ledger_take_from_budget(p_programme, bf.account_id, v_from_shards, p_amount, false, v_txn, 0) t;
    v_seq := ledger_spread_into(p_programme, bt.account_id, v_to_shards, p_amount, v_txn, v_seq);
    -- Budget rows in id order, as the alert job and other moves take them.
    UPDATE budgets SET cap = cap + CASE WHEN id = bf.id THEN -p_amount ELSE p_amount END
    WHERE programme_id = p_programme AND id IN (SELECT id FROM budgets WHERE programme_id = p_programme
                                                AND id IN (bf.id, bt.id) ORDER BY id FOR UPDATE);
    body := jsonb_build_object('transaction_id', v_txn, 'from', ledger_budget_json(p_programme, bf.id),
                               'to', ledger_budget_json(p_programme, bt.id));
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

-- Moves whatever a budget has not issued back to funding: its cap shrinks by as much.
-- The caller has locked the budget's shards (or takes them here, in order).
CREATE OR REPLACE FUNCTION ledger_sweep_budget(p_programme bigint, p_budget bigint, p_reason text, p_actor text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
    v_total bigint;
    v_txn bigint;
    v_seq int := 0;
    v_funding bigint;
    r record;
BEGIN
    SELECT * INTO b FROM budgets WHERE programme_id = p_programme AND id = p_budget;
    PERFORM ledger_lock_account_shards(p_programme, ARRAY[b.account_id]);
    SELECT coalesce(sum(available), 0) INTO v_total FROM account_balances
    WHERE programme_id = p_programme AND account_id = b.account_id;
    IF v_total = 0 THEN
        RETURN 0;
    END IF;
    SELECT a.account_id INTO v_funding FROM ledger_system_account(p_programme, 'funding') a;
    INSERT INTO transactions (programme_id, kind, budget_id, amount, reason, actor)
    VALUES (p_programme, 'budget_close', b.id, -v_total, p_reason, p_actor) RETURNING id INTO v_txn;
    FOR r IN SELECT shard, available FROM account_balances
             WHERE programme_id = p_programme AND account_id = b.account_id AND available <> 0 ORDER BY shard LOOP
        UPDATE account_balances SET available = 0
        WHERE programme_id = p_programme AND account_id = b.account_id AND shard = r.shard;
        PERFORM ledger_entry(p_programme, v_txn, v_seq, b.account_id, r.shard, 0, -r.available);
        v_seq := v_seq + 1;
    END LOOP;
    UPDATE account_balances SET available = available + v_total
    WHERE programme_id = p_programme AND account_id = v_funding AND shard = 0;
    PERFORM ledger_entry(p_programme, v_txn, v_seq, v_funding, 0, 0, v_total);
    UPDATE budgets SET cap = cap - v_total WHERE programme_id = p_programme AND id = b.id;
    RETURN v_total;
END $$;

CREATE OR REPLACE FUNCTION ledger_close_budget(
    p_programme bigint, p_key text, p_fingerprint bytea, p_code text, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    b budgets%ROWTYPE;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;
    b := ledger_lock_budget(p_programme, p_code);
    -- Shards before the budget row, as top-ups and moves take them.
    PERFORM ledger_lock_account_shards(p_programme, ARRAY[b.account_id]);
    b := ledger_lock_budget(p_programme, p_code);
    UPDATE budgets SET status = 'closed', closed_at = now() WHERE programme_id = p_programme AND id = b.id;
    PERFORM ledger_sweep_budget(p_programme, b.id, 'budget closed', p_actor);
    body := ledger_budget_json(p_programme, b.id);
    PERFORM ledger_store_key(p_programme, p_key, 200, body);
END $$;

---------------------------------------------------------------------------------------------
-- Opening accounts: a programme's system accounts, a member's points account.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_open_programme(p_programme bigint, p_sink_shards int DEFAULT 16)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_kind text;
    v_shards int;
    v_account bigint;
BEGIN
    FOREACH v_kind IN ARRAY ARRAY['funding', 'redemption', 'breakage', 'adjustments'] LOOP
        -- Sinks are credited by every spend and expiry, so they are sharded like budgets.
        v_shards := CASE WHEN v_kind IN ('redemption', 'breakage') THEN p_sink_shards ELSE 1 END;
        -- Citus: one sink shard beside each member shard, owned by that shard's anchor.
--citus: v_shards := CASE WHEN v_kind IN ('redemption', 'breakage') THEN (SELECT count(*) FROM ledger_anchors) ELSE 1 END;
        INSERT INTO accounts (programme_id, kind, shards) VALUES (p_programme, v_kind, v_shards)
        RETURNING id INTO v_account;
        INSERT INTO account_balances (programme_id, account_id, shard, floor) --@plain
        SELECT p_programme, v_account, s, NULL FROM generate_series(0, v_shards - 1) s; --@plain
--citus: INSERT INTO account_balances (programme_id, account_id, shard, floor, member_id)
--citus: SELECT p_programme, v_account, a.shard_index, NULL, a.anchor FROM ledger_anchors a WHERE a.shard_index < v_shards;
    END LOOP;
END $$;

-- Enrols a member: the member row, its account and its balance row, in one statement's worth.
-- The floor is 0 unless the programme lets clawbacks take members below zero.
CREATE OR REPLACE FUNCTION ledger_open_member(p_programme bigint, p_external_id text, p_attributes jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_member bigint;
BEGIN
    -- Citus: the member's id is its key, which names its shard (loyalty_member_key).
--citus: v_member := loyalty_member_key(p_programme, p_external_id);
    INSERT INTO accounts (programme_id, kind, shards) VALUES (p_programme, 'member', 1) RETURNING id INTO v_account;
    INSERT INTO account_balances (programme_id, account_id, shard, floor) --@plain
--citus: INSERT INTO account_balances (programme_id, account_id, shard, floor, member_id)
    SELECT p_programme, v_account, 0, CASE WHEN clawback_policy = 'clamp' THEN 0 END --@plain
--citus: SELECT p_programme, v_account, 0, CASE WHEN clawback_policy = 'clamp' THEN 0 END, v_member
    FROM programmes WHERE id = p_programme;
    INSERT INTO members (programme_id, external_id, account_id, attributes) --@plain
    VALUES (p_programme, p_external_id, v_account, coalesce(p_attributes, '{}')) --@plain
--citus: INSERT INTO members (programme_id, id, external_id, account_id, attributes)
--citus: VALUES (p_programme, v_member, p_external_id, v_account, coalesce(p_attributes, '{}'))
    RETURNING id INTO v_member;
--citus: INSERT INTO report_deltas (programme_id, day, metric, n)
--citus: SELECT p_programme, (now() AT TIME ZONE p.timezone)::date, 'new_member', 1 FROM programmes p WHERE p.id = p_programme;
    RETURN v_member;
END $$;

---------------------------------------------------------------------------------------------
-- Batch earn: many earns in one call, set-based (imports, campaign grants). Every item is its
-- own earn transaction with its own lot, exactly as ledger_earn would write it; the statements
-- below each handle all items at once. Items are served in order: an item fails when what the
-- items before it took leaves its budget (or the member's cap) short. 'all or nothing' raises
-- batch_rejected on any failure, so nothing is written.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_earn_batch(
    p_programme bigint, p_key text, p_fingerprint bytea,
    p_members text[], p_budgets text[], p_amounts bigint[], p_references text[], p_reasons text[],
    p_vests_at timestamptz[], p_expires_at timestamptz[], p_all_or_nothing boolean, p_actor text,
    OUT replayed boolean, OUT body jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    v_failures jsonb;
BEGIN
    body := ledger_claim_key(p_programme, p_key, p_fingerprint);
    IF body IS NOT NULL THEN
        replayed := true;
        RETURN;
    END IF;
    replayed := false;

    CREATE TEMP TABLE IF NOT EXISTS pg_temp.batch_items (
        idx bigint PRIMARY KEY, member_ext text, budget_code text, amount bigint, reference text, reason text,
        vests_at timestamptz, expires_at timestamptz, pending boolean,
        member_id bigint, account_id bigint, budget_id bigint, budget_account bigint, unit_cost bigint,
        per_member_cap bigint, error text, detail jsonb, txn_id bigint
    ) ON COMMIT DROP;
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.batch_legs (
        idx bigint, account_id bigint, shard int, amount bigint
    ) ON COMMIT DROP;
    DELETE FROM pg_temp.batch_items;
    DELETE FROM pg_temp.batch_legs;

    -- One pass resolves members and budgets, finds what is plainly wrong with each item, and
    -- numbers the transactions (an item that fails later just leaves a gap in the ids).
    INSERT INTO pg_temp.batch_items (idx, member_ext, budget_code, amount, reference, reason, vests_at, expires_at,
                                     pending, member_id, account_id, budget_id, budget_account, unit_cost,
                                     per_member_cap, error, txn_id)
    SELECT u.i, u.m, u.b, u.a, u.r, u.rs, u.v, u.e, u.v IS NOT NULL AND u.v > now(),
           m.id, m.account_id, b.id, b.account_id, b.unit_cost_micros, b.per_member_cap,
           CASE WHEN m.id IS NULL THEN 'member_not_found'
                WHEN m.status <> 'active' THEN 'member_not_active'
                WHEN b.id IS NULL THEN 'budget_not_found'
                WHEN b.status <> 'active' THEN 'budget_closed'
                WHEN (b.starts_at IS NOT NULL AND now() < b.starts_at)
                  OR (b.ends_at IS NOT NULL AND now() >= b.ends_at) THEN 'budget_not_active' END,
           nextval(pg_get_serial_sequence('transactions', 'id'))
    FROM unnest(p_members, p_budgets, p_amounts, p_references, p_reasons, p_vests_at, p_expires_at)
         WITH ORDINALITY AS u(m, b, a, r, rs, v, e, i)
    LEFT JOIN members m ON m.programme_id = p_programme AND m.external_id = u.m
    LEFT JOIN budgets b ON b.programme_id = p_programme AND b.code = u.b
    ORDER BY u.i;
    ANALYZE pg_temp.batch_items;

    -- Lock order as in ledger_earn: usage rows, budget shards, member balances.
    INSERT INTO budget_member_usage (programme_id, budget_id, member_id, issued)
    SELECT DISTINCT p_programme, budget_id, member_id, 0 FROM pg_temp.batch_items
    WHERE error IS NULL AND per_member_cap IS NOT NULL ORDER BY 2, 3
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM budget_member_usage u
    WHERE u.programme_id = p_programme AND (u.budget_id, u.member_id) IN (
        SELECT budget_id, member_id FROM pg_temp.batch_items WHERE error IS NULL AND per_member_cap IS NOT NULL)
    ORDER BY u.budget_id, u.member_id FOR UPDATE;
    WITH c AS (
        SELECT bi.idx, bi.per_member_cap, u.issued,
               u.issued + sum(bi.amount) OVER (PARTITION BY bi.budget_id, bi.member_id ORDER BY bi.idx) AS cum
        FROM pg_temp.batch_items bi
        JOIN budget_member_usage u ON u.programme_id = p_programme AND u.budget_id = bi.budget_id AND u.member_id = bi.member_id
        WHERE bi.error IS NULL AND bi.per_member_cap IS NOT NULL)
    UPDATE pg_temp.batch_items bi SET error = 'member_cap_reached',
        detail = jsonb_build_object('per_member_cap', c.per_member_cap, 'issued', c.issued)
    FROM c WHERE c.idx = bi.idx AND c.cum > c.per_member_cap;

    PERFORM 1 FROM account_balances ab
    WHERE ab.programme_id = p_programme
      AND ab.account_id IN (SELECT budget_account FROM pg_temp.batch_items WHERE error IS NULL)
    ORDER BY ab.account_id, ab.shard FOR UPDATE;
    WITH rem AS (
        SELECT account_id, sum(available) AS remaining FROM account_balances
        WHERE programme_id = p_programme
          AND account_id IN (SELECT budget_account FROM pg_temp.batch_items WHERE error IS NULL)
        GROUP BY account_id
    ), c AS (
        SELECT bi.idx, r.remaining, sum(bi.amount) OVER (PARTITION BY bi.budget_account ORDER BY bi.idx) AS cum
        FROM pg_temp.batch_items bi JOIN rem r ON r.account_id = bi.budget_account WHERE bi.error IS NULL)
    UPDATE pg_temp.batch_items bi SET error = 'budget_exhausted', detail = jsonb_build_object('remaining', c.remaining)
    FROM c WHERE c.idx = bi.idx AND c.cum > c.remaining;

    IF p_all_or_nothing THEN
        SELECT jsonb_agg(jsonb_build_object('index', idx - 1, 'error', error, 'member_id', member_ext,
                                            'budget', budget_code) ORDER BY idx)
        INTO v_failures
        FROM (SELECT * FROM pg_temp.batch_items WHERE error IS NOT NULL ORDER BY idx LIMIT 100) f;
        IF v_failures IS NOT NULL THEN
            PERFORM loyalty_fail('batch_rejected', jsonb_build_object(
                'failed', (SELECT count(*) FROM pg_temp.batch_items WHERE error IS NOT NULL), 'failures', v_failures));
        END IF;
    END IF;

    -- Each item's budget legs: the item's slice of its budget's running total, cut where the
    -- shards' balances (laid end to end) begin and end. An item may span two shards.
    WITH pos AS (
        SELECT idx, budget_account,
               sum(amount) OVER (PARTITION BY budget_account ORDER BY idx) - amount AS s,
               sum(amount) OVER (PARTITION BY budget_account ORDER BY idx) AS e
        FROM pg_temp.batch_items WHERE error IS NULL
    ), sh AS (
        SELECT account_id, shard,
               sum(available) OVER (PARTITION BY account_id ORDER BY shard) - available AS s,
               sum(available) OVER (PARTITION BY account_id ORDER BY shard) AS e
        FROM account_balances
        WHERE programme_id = p_programme AND available > 0
          AND account_id IN (SELECT budget_account FROM pg_temp.batch_items WHERE error IS NULL)
    )
    INSERT INTO pg_temp.batch_legs (idx, account_id, shard, amount)
    SELECT p.idx, sh.account_id, sh.shard, least(p.e, sh.e) - greatest(p.s, sh.s)
    FROM pos p JOIN sh ON sh.account_id = p.budget_account AND sh.s < p.e AND p.s < sh.e;

    UPDATE account_balances ab SET available = ab.available - l.total
    FROM (SELECT account_id, shard, sum(amount) AS total FROM pg_temp.batch_legs GROUP BY account_id, shard) l
    WHERE ab.programme_id = p_programme AND ab.account_id = l.account_id AND ab.shard = l.shard;

    -- Member rows locked in account order; their balance before the batch tells each member's
    -- debt, which the earliest items pay off first (the lots keep only what exceeds it).
    WITH locked AS (
        SELECT account_id, available FROM account_balances
        WHERE programme_id = p_programme AND shard = 0
          AND account_id IN (SELECT account_id FROM pg_temp.batch_items WHERE error IS NULL)
        ORDER BY account_id FOR UPDATE
    ), items AS (
        SELECT bi.*, greatest(-l.available, 0) AS debt,
               sum(bi.amount) FILTER (WHERE NOT bi.pending) OVER (PARTITION BY bi.account_id ORDER BY bi.idx) AS cum
        FROM pg_temp.batch_items bi JOIN locked l ON l.account_id = bi.account_id
        WHERE bi.error IS NULL
    )
    INSERT INTO lots (programme_id, member_id, txn_id, budget_id, amount, remaining, unit_cost_micros,
                      vested, vests_at, expires_at)
    SELECT p_programme, member_id, txn_id, budget_id, amount,
           CASE WHEN pending THEN amount ELSE greatest(cum - debt, 0) - greatest(cum - amount - debt, 0) END,
           unit_cost, NOT pending, CASE WHEN pending THEN vests_at END, expires_at
    FROM items ORDER BY idx;

    UPDATE account_balances ab
    SET available = ab.available + m.avail, pending = ab.pending + m.pend
    FROM (SELECT account_id, coalesce(sum(amount) FILTER (WHERE NOT pending), 0) AS avail,
                 coalesce(sum(amount) FILTER (WHERE pending), 0) AS pend
          FROM pg_temp.batch_items WHERE error IS NULL GROUP BY account_id) m
    WHERE ab.programme_id = p_programme AND ab.account_id = m.account_id AND ab.shard = 0;

    UPDATE budget_member_usage u SET issued = u.issued + s.total
    FROM (SELECT budget_id, member_id, sum(amount) AS total FROM pg_temp.batch_items
          WHERE error IS NULL AND per_member_cap IS NOT NULL GROUP BY budget_id, member_id) s
    WHERE u.programme_id = p_programme AND u.budget_id = s.budget_id AND u.member_id = s.member_id;

    INSERT INTO transactions (programme_id, id, kind, member_id, budget_id, reference, amount, cost_micros, reason, actor)
    SELECT p_programme, txn_id, 'earn', member_id, budget_id, reference, amount, amount * unit_cost, reason, p_actor
    FROM pg_temp.batch_items WHERE error IS NULL ORDER BY idx;
    INSERT INTO entries (programme_id, txn_id, seq, account_id, shard, bucket, amount)
    SELECT p_programme, txn_id, 0, account_id, 0, CASE WHEN pending THEN 1 ELSE 0 END, amount
    FROM pg_temp.batch_items WHERE error IS NULL
    UNION ALL
    SELECT p_programme, bi.txn_id, row_number() OVER (PARTITION BY l.idx ORDER BY l.shard), l.account_id, l.shard, 0, -l.amount
    FROM pg_temp.batch_legs l JOIN pg_temp.batch_items bi ON bi.idx = l.idx;
    -- A compact answer for bulk work: the transaction id of each item in item order (null where
    -- the item failed) and the failures with their reasons.
    SELECT jsonb_build_object(
        'mode', CASE WHEN p_all_or_nothing THEN 'all_or_nothing' ELSE 'per_item' END,
        'earned', count(*) FILTER (WHERE error IS NULL),
        'failed', count(*) FILTER (WHERE error IS NOT NULL),
        'points', coalesce(sum(amount) FILTER (WHERE error IS NULL), 0),
        'transaction_ids', to_jsonb(array_agg(CASE WHEN error IS NULL THEN txn_id END ORDER BY idx)),
        'failures', coalesce(jsonb_agg(jsonb_build_object('index', idx - 1, 'error', error, 'detail', detail)
                                       ORDER BY idx) FILTER (WHERE error IS NOT NULL), '[]'::jsonb))
    INTO body FROM pg_temp.batch_items;
    PERFORM ledger_store_key(p_programme, p_key, 201, body);
END $$;

---------------------------------------------------------------------------------------------
-- Budget alerts: a worker job records budget.threshold_reached once per threshold crossed.
-- An advisory lock keeps two workers from firing the same alert twice.
---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_budget_alerts()
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_count int;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('ledger_budget_alerts')) THEN
        RETURN 0;
    END IF;
    -- Budgets whose row is busy (a top-up, a move) are left for the next run: never wait.
    WITH free AS (
        SELECT programme_id, id FROM budgets
        WHERE status = 'active' AND cardinality(alert_thresholds) > cardinality(alerts_sent)
        ORDER BY programme_id, id FOR UPDATE SKIP LOCKED
    ), usage AS (
        SELECT b.programme_id, b.id, b.code, b.cap, b.alert_thresholds, b.alerts_sent,
               b.cap - coalesce(sum(ab.available), 0) AS issued
        FROM budgets b
        JOIN free f ON f.programme_id = b.programme_id AND f.id = b.id
        JOIN account_balances ab ON ab.programme_id = b.programme_id AND ab.account_id = b.account_id
        GROUP BY b.programme_id, b.id
    ), crossed AS (
        SELECT u.programme_id, u.id, u.code, u.cap, u.issued, t.pct
        FROM usage u, unnest(u.alert_thresholds) AS t(pct)
        WHERE u.cap > 0 AND u.issued * 100 >= t.pct::bigint * u.cap AND NOT (t.pct = ANY (u.alerts_sent))
    ), marked AS (
        UPDATE budgets b
        SET alerts_sent = ARRAY(SELECT DISTINCT x FROM unnest(b.alerts_sent || c.pcts) x ORDER BY x)
        FROM (SELECT programme_id, id, array_agg(pct) AS pcts FROM crossed GROUP BY programme_id, id) c
        WHERE b.programme_id = c.programme_id AND b.id = c.id
        RETURNING b.id
    ), events AS (
        INSERT INTO domain_events (programme_id, type, subject, payload)
        SELECT programme_id, 'budget.threshold_reached', 'budget:' || code,
               jsonb_build_object('budget', code, 'threshold_percent', pct, 'issued', issued, 'cap', cap)
        FROM crossed ORDER BY programme_id, id, pct
        RETURNING 1
    )
    SELECT count(*) INTO v_count FROM events;
    RETURN v_count;
END $$;

-- Citus: a call that names its member's key runs whole on that member's node.
--citus: SELECT create_distributed_function('ledger_earn(bigint, text, bytea, text, text, bigint, boolean, text, text, timestamptz, timestamptz, jsonb, text, bigint)', 'p_member_key', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_spend(bigint, text, bytea, text, bigint, text, text, jsonb, text, bigint)', 'p_member_key', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_hold(bigint, text, bytea, text, bigint, timestamptz, text, text, bigint)', 'p_member_key', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_capture(bigint, text, bytea, bigint, bigint, text)', 'p_hold', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_void(bigint, text, bytea, bigint, text)', 'p_hold', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_clawback(bigint, text, bytea, text, text, bigint, text, text, bigint)', 'p_member_key', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_member_job(text, bigint, bigint)', 'p_member_key', colocate_with := 'members');
--citus: SELECT create_distributed_function('ledger_expire_hold(bigint, bigint, bigint)', 'p_member_key', colocate_with := 'members');
