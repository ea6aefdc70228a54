-- Domain events of the ledger, written in the same transaction as the postings they tell of.
--
-- One statement-level trigger on transactions covers every path that moves a member's points
-- (single calls, batch earn, the worker's expiry, inline expiry before a spend), so no posting
-- function has to remember to write its event. The webhook fan-out trigger on domain_events
-- then turns each event into deliveries, still in the same transaction.

CREATE OR REPLACE FUNCTION ledger_emit_events()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_types text[];
BEGIN
    -- Events exist to be delivered, and an endpoint receives only events written after it was
    -- registered: a programme none of whose active endpoints wants points events gets none
    -- written (batch earn writes 10,000 postings a statement). One statement posts for one
    -- programme.
    SELECT array_agg(DISTINCT ty) INTO v_types
    FROM webhook_endpoints ep, unnest(ep.event_types) ty
    WHERE ep.active AND ep.programme_id = (SELECT programme_id FROM new_transactions LIMIT 1);
    IF v_types IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO domain_events (programme_id, type, subject, payload)
    SELECT t.programme_id,
           CASE t.kind
               WHEN 'earn' THEN 'points.earned'
               WHEN 'spend' THEN 'points.spent'
               WHEN 'capture' THEN 'points.spent'
               WHEN 'expire' THEN 'points.expired'
               WHEN 'clawback' THEN 'points.clawed_back'
               WHEN 'adjust' THEN 'points.adjusted'
           END,
           'member:' || m.external_id,
           jsonb_build_object(
               'member_id', m.external_id,
               'transaction_id', t.id,
               'kind', t.kind,
               'points', abs(t.amount),
               'amount', t.amount,
               'budget', b.code,
               'reference', t.reference,
               'reason', t.reason,
               'cost_micros', t.cost_micros,
               'metadata', t.metadata)
    FROM new_transactions t
    JOIN members m ON m.programme_id = t.programme_id AND m.id = t.member_id
    LEFT JOIN budgets b ON b.programme_id = t.programme_id AND b.id = t.budget_id
    WHERE t.amount <> 0
      AND CASE TG_OP WHEN 'INSERT' THEN t.kind IN ('earn', 'spend', 'capture', 'expire', 'adjust')
                     ELSE t.kind = 'clawback' END
      AND ('*' = ANY (v_types) OR CASE t.kind
               WHEN 'earn' THEN 'points.earned'
               WHEN 'spend' THEN 'points.spent'
               WHEN 'capture' THEN 'points.spent'
               WHEN 'expire' THEN 'points.expired'
               WHEN 'clawback' THEN 'points.clawed_back'
               WHEN 'adjust' THEN 'points.adjusted'
           END = ANY (v_types))
    ORDER BY t.id;
    RETURN NULL;
END $$;

-- On Citus a statement trigger cannot join its transition table with a distributed table, so
-- there each row tells its own event, reading its member on the row's own shard.
CREATE OR REPLACE FUNCTION ledger_emit_event_row()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_types text[];
    v_type text;
    v_member text;
    v_budget text;
BEGIN
    IF NEW.amount = 0 OR (TG_OP = 'INSERT' AND NEW.kind NOT IN ('earn', 'spend', 'capture', 'expire', 'adjust'))
       OR (TG_OP = 'UPDATE' AND NEW.kind <> 'clawback') THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(DISTINCT ty) INTO v_types
    FROM webhook_endpoints ep, unnest(ep.event_types) ty
    WHERE ep.active AND ep.programme_id = NEW.programme_id;
    v_type := CASE NEW.kind
        WHEN 'earn' THEN 'points.earned'
        WHEN 'spend' THEN 'points.spent'
        WHEN 'capture' THEN 'points.spent'
        WHEN 'expire' THEN 'points.expired'
        WHEN 'clawback' THEN 'points.clawed_back'
        WHEN 'adjust' THEN 'points.adjusted'
    END;
    IF v_types IS NULL OR NOT ('*' = ANY (v_types) OR v_type = ANY (v_types)) THEN
        RETURN NULL;
    END IF;
    SELECT external_id INTO v_member FROM members WHERE programme_id = NEW.programme_id AND id = NEW.member_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- Read first: Citus allows no subquery inside an INSERT into a distributed table.
    SELECT code INTO v_budget FROM budgets WHERE programme_id = NEW.programme_id AND id = NEW.budget_id;
    -- The event, and the deliveries its row trigger fans out, sit on the member's own shard.
    INSERT INTO domain_events (programme_id, member_id, type, subject, payload)
    VALUES (NEW.programme_id, NEW.member_id, v_type, 'member:' || v_member, jsonb_build_object(
        'member_id', v_member, 'transaction_id', NEW.id, 'kind', NEW.kind, 'points', abs(NEW.amount),
        'amount', NEW.amount,
        'budget', v_budget,
        'reference', NEW.reference, 'reason', NEW.reason, 'cost_micros', NEW.cost_micros, 'metadata', NEW.metadata));
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS transactions_emit_events ON transactions;

CREATE TRIGGER transactions_emit_events --@plain
AFTER INSERT ON transactions --@plain
REFERENCING NEW TABLE AS new_transactions --@plain
FOR EACH STATEMENT EXECUTE FUNCTION ledger_emit_events(); --@plain
--citus: CREATE TRIGGER transactions_emit_events AFTER INSERT ON transactions
--citus: FOR EACH ROW EXECUTE FUNCTION ledger_emit_event_row();

-- A clawback's transaction row is written first with amount 0 and given its amount once the
-- lots are worked out: its event goes out on that update.
DROP TRIGGER IF EXISTS transactions_emit_events_on_amount ON transactions;

CREATE TRIGGER transactions_emit_events_on_amount --@plain
AFTER UPDATE ON transactions --@plain
REFERENCING NEW TABLE AS new_transactions --@plain
FOR EACH STATEMENT EXECUTE FUNCTION ledger_emit_events(); --@plain
--citus: CREATE TRIGGER transactions_emit_events_on_amount AFTER UPDATE ON transactions
--citus: FOR EACH ROW EXECUTE FUNCTION ledger_emit_event_row();
