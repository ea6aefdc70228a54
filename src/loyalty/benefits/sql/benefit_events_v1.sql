-- benefit.granted when a member's tier starts giving them a benefit.
--
-- Triggers on member_tiers cover every path that sets a tier (an event's promotion, the
-- scheduled job, a full re-evaluation, pins): one set-based insert per statement, in the same
-- transaction, for each benefit the new tier includes and the old one did not. Like the
-- ledger's events, they are written only when an active endpoint of the programme subscribes
-- to them (a re-evaluation of a million members would otherwise write rows nobody reads).

CREATE OR REPLACE FUNCTION benefit_emit_tier_grants()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_programme bigint;
BEGIN
    SELECT programme_id INTO v_programme FROM new_tiers LIMIT 1;
    IF v_programme IS NULL OR NOT EXISTS (
        SELECT 1 FROM webhook_endpoints ep
        WHERE ep.programme_id = v_programme AND ep.active
          AND ('benefit.granted' = ANY (ep.event_types) OR '*' = ANY (ep.event_types))
    ) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO domain_events (programme_id, type, subject, payload)
        SELECT n.programme_id, 'benefit.granted', 'member:' || m.external_id,
               jsonb_build_object('member_id', m.external_id, 'benefit', b.code,
                                  'source', jsonb_build_object('kind', 'tier', 'ref', n.tier),
                                  'params', b.params || tb.params)
        FROM new_tiers n
        JOIN members m ON m.programme_id = n.programme_id AND m.id = n.member_id
        JOIN tier_benefits tb ON tb.programme_id = n.programme_id AND tb.tier = n.tier
        JOIN benefits b ON b.programme_id = tb.programme_id AND b.id = tb.benefit_id AND b.active
        -- A member without a row is on the base tier already: a base row changes nothing.
        WHERE n.rank > 0
        ORDER BY n.member_id, b.id;
    ELSE
        INSERT INTO domain_events (programme_id, type, subject, payload)
        SELECT n.programme_id, 'benefit.granted', 'member:' || m.external_id,
               jsonb_build_object('member_id', m.external_id, 'benefit', b.code,
                                  'source', jsonb_build_object('kind', 'tier', 'ref', n.tier),
                                  'params', b.params || tb.params)
        FROM new_tiers n
        JOIN old_tiers o ON o.programme_id = n.programme_id AND o.member_id = n.member_id
        JOIN members m ON m.programme_id = n.programme_id AND m.id = n.member_id
        JOIN tier_benefits tb ON tb.programme_id = n.programme_id AND tb.tier = n.tier
        JOIN benefits b ON b.programme_id = tb.programme_id AND b.id = tb.benefit_id AND b.active
        WHERE n.tier IS DISTINCT FROM o.tier
          AND NOT EXISTS (SELECT 1 FROM tier_benefits was
                          WHERE was.programme_id = o.programme_id AND was.tier = o.tier
                            AND was.benefit_id = tb.benefit_id)
        ORDER BY n.member_id, b.id;
    END IF;
    RETURN NULL;
END $$;

-- On Citus a statement trigger cannot join its transition table with a distributed table, so
-- there each tier row tells its own grants, on the member's shard (the member and their tier
-- row sit there; tier_benefits, benefits and webhook_endpoints are replicated to every node).
CREATE OR REPLACE FUNCTION benefit_emit_tier_grants_row()
RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_member text;
BEGIN
    IF TG_OP = 'INSERT' AND NEW.rank <= 0 THEN
        RETURN NULL;
    ELSIF TG_OP = 'UPDATE' AND NEW.tier IS NOT DISTINCT FROM OLD.tier THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM webhook_endpoints ep
        WHERE ep.programme_id = NEW.programme_id AND ep.active
          AND ('benefit.granted' = ANY (ep.event_types) OR '*' = ANY (ep.event_types))
    ) THEN
        RETURN NULL;
    END IF;
    SELECT external_id INTO v_member FROM members WHERE programme_id = NEW.programme_id AND id = NEW.member_id; --@plain
--citus: -- A trigger on a shard may not run a distributed query: the member is read from the
--citus: -- co-located shard of members, which sits on this node.
--citus: EXECUTE format('SELECT external_id FROM %I WHERE programme_id = $1 AND id = $2',
--citus:                'members_' || get_shard_id_for_distribution_column('members', NEW.member_id))
--citus:    INTO v_member USING NEW.programme_id, NEW.member_id;
    IF v_member IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO domain_events (programme_id, type, subject, payload)
    SELECT NEW.programme_id, 'benefit.granted', 'member:' || v_member,
           jsonb_build_object('member_id', v_member, 'benefit', b.code,
                              'source', jsonb_build_object('kind', 'tier', 'ref', NEW.tier),
                              'params', b.params || tb.params)
    FROM tier_benefits tb
    JOIN benefits b ON b.programme_id = tb.programme_id AND b.id = tb.benefit_id AND b.active
    WHERE tb.programme_id = NEW.programme_id AND tb.tier = NEW.tier
      AND (TG_OP = 'INSERT' OR NOT EXISTS (SELECT 1 FROM tier_benefits was
                                          WHERE was.programme_id = OLD.programme_id AND was.tier = OLD.tier
                                            AND was.benefit_id = tb.benefit_id))
    ORDER BY b.id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS member_tiers_benefit_grants_insert ON member_tiers;

CREATE TRIGGER member_tiers_benefit_grants_insert --@plain
AFTER INSERT ON member_tiers --@plain
REFERENCING NEW TABLE AS new_tiers --@plain
FOR EACH STATEMENT EXECUTE FUNCTION benefit_emit_tier_grants(); --@plain
--citus: CREATE TRIGGER member_tiers_benefit_grants_insert AFTER INSERT ON member_tiers
--citus: FOR EACH ROW EXECUTE FUNCTION benefit_emit_tier_grants_row();

DROP TRIGGER IF EXISTS member_tiers_benefit_grants_update ON member_tiers;

CREATE TRIGGER member_tiers_benefit_grants_update --@plain
AFTER UPDATE ON member_tiers --@plain
REFERENCING OLD TABLE AS old_tiers NEW TABLE AS new_tiers --@plain
FOR EACH STATEMENT EXECUTE FUNCTION benefit_emit_tier_grants(); --@plain
--citus: CREATE TRIGGER member_tiers_benefit_grants_update AFTER UPDATE ON member_tiers
--citus: FOR EACH ROW EXECUTE FUNCTION benefit_emit_tier_grants_row();
