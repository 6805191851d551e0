-- The event store, exactly as eventsourcing 9.5's PostgresApplicationRecorder defines it
-- (the recorder runs with CREATE_TABLE=no, so these migrations are the one source of truth).
-- The library names the table after the application: VotingApplication.name = "cardinal".
CREATE TABLE cardinal_events (
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    state bytea,
    notification_id bigserial,
    PRIMARY KEY (originator_id, originator_version)
) WITH (
    autovacuum_enabled = true,
    autovacuum_vacuum_threshold = 100000000,
    autovacuum_vacuum_scale_factor = 0.5,
    autovacuum_analyze_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01
);

CREATE UNIQUE INDEX cardinal_events_notification_id_idx
    ON cardinal_events (notification_id ASC);

-- The composite type the library's recorder inserts through.
CREATE TYPE stored_event_uuid AS (
    originator_id uuid,
    originator_version bigint,
    topic text,
    state bytea
);

-- Events are immutable: refuse UPDATE, DELETE and TRUNCATE at the database, so that a
-- buggy or careless client cannot rewrite history (the audit hash chain detects the rest).
CREATE FUNCTION refuse_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stored events are immutable (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER cardinal_events_immutable
    BEFORE UPDATE OR DELETE ON cardinal_events
    FOR EACH ROW EXECUTE FUNCTION refuse_event_change();

CREATE TRIGGER cardinal_events_no_truncate
    BEFORE TRUNCATE ON cardinal_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_event_change();
