-- A group commit in one round trip: called as a statement of its own on an autocommit
-- connection, it is the whole transaction (lock, insert, checks, commit), so the table
-- lock is held only while the server works, never across a client's round trip.
--
-- It records the rows it can (a row whose (id, version) is taken is left out: a conflict)
-- and returns them. Where the batch cannot stand as recorded, it raises CV001 and nothing
-- is recorded; the writer then works the batch out with the slower, statement-by-statement
-- transaction (infra/store/batch.py), which knows which appends to refuse:
--   - an append with only some of its rows recorded (an append is atomic);
--   - an append guarded by an election (a ballot) while that election's Closed event is
--     in the log, recorded before or in this very batch.
-- Both are rare: concurrent writers of one aggregate, and ballots racing their close.
CREATE FUNCTION cardinal_append(
    ids uuid[], versions bigint[], topics text[], states bytea[],
    appends integer[],  -- each row's append, numbered from 1; NULL: one row per append
    guards uuid[],      -- the elections the batch's ballots are guarded by
    closed_topic text
) RETURNS TABLE (originator_id uuid, originator_version bigint, notification_id bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r_ids uuid[];
    r_versions bigint[];
    r_positions bigint[];
BEGIN
    LOCK TABLE cardinal_events IN EXCLUSIVE MODE;
    PERFORM pg_notify('cardinal_events', '');
    WITH recorded AS (
        INSERT INTO cardinal_events AS e (originator_id, originator_version, topic, state)
        SELECT * FROM unnest(ids, versions, topics, states)
        ON CONFLICT DO NOTHING
        RETURNING e.originator_id, e.originator_version, e.notification_id
    )
    SELECT array_agg(r.originator_id), array_agg(r.originator_version),
           array_agg(r.notification_id)
    INTO r_ids, r_versions, r_positions
    FROM recorded r;
    IF coalesce(cardinality(cardinal_append.guards), 0) > 0 AND EXISTS (
        SELECT 1 FROM cardinal_events e
        WHERE e.originator_id = ANY(cardinal_append.guards) AND e.topic = closed_topic
    ) THEN
        RAISE EXCEPTION 'a guarded election is closed' USING ERRCODE = 'CV001';
    END IF;
    IF appends IS NOT NULL AND EXISTS (
        SELECT 1
        FROM unnest(ids, versions, appends) AS k(id, version, append)
        LEFT JOIN unnest(r_ids, r_versions) AS r(id, version)
          ON r.id = k.id AND r.version = k.version
        GROUP BY k.append
        HAVING count(r.id) NOT IN (0, count(*))
    ) THEN
        RAISE EXCEPTION 'an append is partly recorded' USING ERRCODE = 'CV001';
    END IF;
    RETURN QUERY SELECT * FROM unnest(r_ids, r_versions, r_positions);
END;
$$;
