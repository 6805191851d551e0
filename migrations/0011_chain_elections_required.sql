-- A chain link must name its entry's election: a sealer that leaves the column out is refused.
--
-- A sealer of a release before 0009 writes links without election_id (it kept the election
-- in election_streams, which 0009 dropped). One still running while 0009 was applied (an old
-- relay beside the new `migrate`) committed its pages that held no BallotCast or
-- ElectionCreated (revisions, withdrawals, opens, closes) with election_id NULL: those entries
-- were left out of their election's audit read, and `cardinal audit verify` reported them as
-- altered, for good. This migration files them where they belong (as filed_election in
-- infra/audit/chain.py does: an election's entries under their stream, a ballot's under the
-- election its payload names; anything else, or a ballot naming no legible election, under
-- none), and then makes an insert that leaves the column out fail (its DEFAULT raises), so
-- such a sealer's page rolls back and it retries, writing nothing, until it is stopped. The
-- sealer of this release names the column on every link, NULL where the entry has no election
-- (which is why the column stays nullable): its inserts never reach the DEFAULT.
--
-- The backfill reads the whole chain (the links to mend are wherever an old sealer wrote
-- them). Run straight after 0009, whose update leaves a dead row behind every link, that first
-- read took 11 s on a million links (scratch measurement), under no lock but the update's: the
-- chain stays readable (receipts) and writable. Then the DEFAULT takes the table's exclusive
-- lock, and a second backfill (0.3 s on the same million) mends what an old sealer committed
-- in between; nothing can come after it.

-- The election an entry is filed under, from its topic, stream and state (filed_election).
CREATE FUNCTION pg_temp.filed_election(topic text, stream uuid, state bytea) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    kind text := replace(substring(topic FROM '[^:]*$'), '.', '');
    named jsonb;
    digits text;
BEGIN
    IF kind LIKE 'Election%' THEN
        RETURN stream;
    ELSIF kind NOT LIKE 'Ballot%' THEN
        RETURN NULL;
    END IF;
    BEGIN
        named := convert_from(state, 'UTF8')::jsonb -> 'election_id';
    EXCEPTION WHEN data_exception THEN
        RETURN NULL;  -- not UTF-8 or not JSON: it names no election
    END;
    IF named IS NULL OR jsonb_typeof(named) <> 'string' THEN
        RETURN NULL;
    END IF;
    -- What Python's UUID() accepts: 32 hex digits, hyphens, braces and urn:/uuid: aside.
    digits := replace(replace(named #>> '{}', 'urn:', ''), 'uuid:', '');
    digits := replace(btrim(digits, '{}'), '-', '');
    IF digits !~ '^[0-9a-fA-F]{32}$' THEN
        RETURN NULL;
    END IF;
    RETURN digits::uuid;
END
$$;

UPDATE audit_chain c
SET election_id = pg_temp.filed_election(e.topic, e.originator_id, e.state)
FROM cardinal_events e
WHERE c.election_id IS NULL
  AND e.notification_id = c.position
  AND pg_temp.filed_election(e.topic, e.originator_id, e.state) IS NOT NULL;

CREATE FUNCTION audit_chain_election_left_out() RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain.election_id left out: a sealer of a release before migration 0009 is running on this database; stop every process of the earlier release'
        USING ERRCODE = 'not_null_violation';
END
$$;

ALTER TABLE audit_chain ALTER COLUMN election_id SET DEFAULT audit_chain_election_left_out();

-- (the same again, now under the lock)
UPDATE audit_chain c
SET election_id = pg_temp.filed_election(e.topic, e.originator_id, e.state)
FROM cardinal_events e
WHERE c.election_id IS NULL
  AND e.notification_id = c.position
  AND pg_temp.filed_election(e.topic, e.originator_id, e.state) IS NOT NULL;

DROP FUNCTION pg_temp.filed_election(text, uuid, bytea);
