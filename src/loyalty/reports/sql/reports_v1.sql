-- Report deltas for the rare writes: an enrolment and a tier change each append one row per
-- statement (grouped by programme and local day) to report_deltas, an append-only table with
-- no unique key, so concurrent writers never wait on each other here. The worker's
-- rollup_reports job deletes the deltas it folds into daily_members and weekly_tier_moves in
-- the same transaction, so a delta is counted once, whenever its writer commits.

CREATE OR REPLACE FUNCTION report_members_enrolled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_deltas (programme_id, day, metric, n)
    SELECT n.programme_id, (n.enrolled_at AT TIME ZONE p.timezone)::date, 'new_member', count(*)
    FROM new_rows n JOIN programmes p ON p.id = n.programme_id
    GROUP BY 1, 2;
    RETURN NULL;
END $$;

-- On Citus a trigger on a member's shard cannot write to another table's, so there
-- ledger_open_member writes its enrolment's delta itself.
DROP TRIGGER IF EXISTS report_members_enrolled ON members;
CREATE TRIGGER report_members_enrolled AFTER INSERT ON members --@plain
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION report_members_enrolled(); --@plain

-- Only rows that change the tier count as moves ('' stands for "no tier").
CREATE OR REPLACE FUNCTION report_tier_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_deltas (programme_id, day, metric, kind, from_tier, to_tier, n)
    SELECT n.programme_id, (n.at AT TIME ZONE p.timezone)::date, 'tier_move', n.kind,
           coalesce(n.from_tier, ''), coalesce(n.to_tier, ''), count(*)
    FROM new_rows n JOIN programmes p ON p.id = n.programme_id
    WHERE n.from_tier IS DISTINCT FROM n.to_tier
    GROUP BY 1, 2, 4, 5, 6;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS report_tier_changes ON member_tier_history;
CREATE TRIGGER report_tier_changes AFTER INSERT ON member_tier_history --@plain
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION report_tier_changes(); --@plain
