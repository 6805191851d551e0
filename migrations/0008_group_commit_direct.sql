-- cardinal_append (0007), with the common batch answered straight from the INSERT.
--
-- A batch of one-row appends (every batch of ballots: `appends` is NULL) cannot be partly
-- recorded, so its rows go back as the INSERT returns them, and the close check follows;
-- its RAISE still undoes the whole statement, rows already returned included. Collecting
-- the rows into arrays and unnesting them again cost 0007 about 55 us of server CPU per
-- group commit of 16 (cardinal bench machine's figures for the machine: README).
-- Batches with multi-row appends keep 0007's way, which needs the recorded rows in hand.
CREATE OR REPLACE FUNCTION cardinal_append(
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
    IF appends IS NULL THEN
        RETURN QUERY
        INSERT INTO cardinal_events AS e (originator_id, originator_version, topic, state)
        SELECT * FROM unnest(ids, versions, topics, states)
        ON CONFLICT DO NOTHING
        RETURNING e.originator_id, e.originator_version, e.notification_id;
        IF coalesce(cardinality(cardinal_append.guards), 0) > 0 AND EXISTS (
            SELECT 1 FROM cardinal_events e
            WHERE e.originator_id = ANY(cardinal_append.guards) AND e.topic = closed_topic
        ) THEN
            RAISE EXCEPTION 'a guarded election is closed' USING ERRCODE = 'CV001';
        END IF;
        RETURN;
    END IF;
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
    IF EXISTS (
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
