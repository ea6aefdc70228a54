-- Applying a batch of imported rows, version 1: one call per batch, one subtransaction (an
-- implicit savepoint) per row, so that each row applies whole or not at all and a refused
-- row leaves the others of its batch in place.
--
-- This file is a repeatable migration (loyalty.sql_files): every statement must be safe to run
-- again on a database that holds any earlier version of it.

-- Point grants: each row is one ledger_earn with the row's own idempotency key, so a file
-- uploaded again (or a batch run again after a crash) replays instead of granting twice.
CREATE OR REPLACE FUNCTION import_apply_points(
    p_programme bigint, p_budget text, p_actor text,
    p_lines int[], p_keys text[], p_fingerprints bytea[], p_members text[], p_amounts bigint[],
    p_references text[], p_reasons text[]
) RETURNS TABLE (line int, outcome text, code text, detail text, transaction_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_replayed boolean;
    v_body jsonb;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_lines, 1), 0) LOOP
        line := p_lines[i];
        code := NULL;
        detail := NULL;
        BEGIN
            SELECT e.replayed, e.body INTO v_replayed, v_body
            FROM ledger_earn(p_programme, p_keys[i], p_fingerprints[i], p_members[i], p_budget, p_amounts[i],
                             false, p_references[i], p_reasons[i], NULL, NULL, NULL, p_actor) e;
            outcome := CASE WHEN v_replayed THEN 'unchanged' ELSE 'applied' END;
            transaction_id := (v_body ->> 'transaction_id')::bigint;
        EXCEPTION WHEN SQLSTATE 'LY000' THEN
            -- A business refusal (budget exhausted, unknown member ...): the row's savepoint
            -- is rolled back, its idempotency claim included; the batch goes on.
            GET STACKED DIAGNOSTICS code = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
            outcome := 'rejected';
            transaction_id := NULL;
        END;
        RETURN NEXT;
    END LOOP;
END $$;

-- Members: a row creates the member (with its points account) or merges its attributes into
-- the existing one; a top-level null attribute removes that key, as PATCH /v1/members does.
CREATE OR REPLACE FUNCTION import_apply_members(
    p_programme bigint, p_lines int[], p_members text[], p_attributes jsonb[], p_statuses text[]
) RETURNS TABLE (line int, outcome text, code text, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    v_attributes jsonb;
    v_removed text[];
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_lines, 1), 0) LOOP
        line := p_lines[i];
        code := NULL;
        detail := NULL;
        v_attributes := coalesce(p_attributes[i], '{}');
        v_removed := ARRAY(SELECT key FROM jsonb_each(v_attributes) WHERE value = 'null');
        BEGIN
            FOR attempt IN 1 .. 2 LOOP
                UPDATE members m SET
                    attributes = (m.attributes || v_attributes) - v_removed,
                    status = coalesce(p_statuses[i], m.status),
                    updated_at = now()
                WHERE m.programme_id = p_programme AND m.external_id = p_members[i]
                  AND ((m.attributes || v_attributes) - v_removed <> m.attributes
                       OR coalesce(p_statuses[i], m.status) <> m.status);
                IF FOUND THEN
                    outcome := 'applied';
                    EXIT;
                END IF;
                IF EXISTS (SELECT 1 FROM members m
                           WHERE m.programme_id = p_programme AND m.external_id = p_members[i]) THEN
                    outcome := 'unchanged';
                    EXIT;
                END IF;
                BEGIN
                    PERFORM ledger_open_member(p_programme, p_members[i], v_attributes - v_removed);
                    IF p_statuses[i] IS NOT NULL AND p_statuses[i] <> 'active' THEN
                        UPDATE members m SET status = p_statuses[i]
                        WHERE m.programme_id = p_programme AND m.external_id = p_members[i];
                    END IF;
                    outcome := 'applied';
                    EXIT;
                EXCEPTION WHEN unique_violation THEN
                    -- Enrolled meanwhile by another transaction: update it instead.
                    outcome := NULL;
                END;
            END LOOP;
            IF outcome IS NULL THEN
                PERFORM loyalty_fail('member_exists', jsonb_build_object('member_id', p_members[i]));
            END IF;
        EXCEPTION WHEN SQLSTATE 'LY000' THEN
            GET STACKED DIAGNOSTICS code = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
            outcome := 'rejected';
        END;
        RETURN NEXT;
    END LOOP;
END $$;
