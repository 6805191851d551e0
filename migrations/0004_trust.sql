-- Poison isolation and stepped live results.
--
-- projection_set_aside: log entries a projection version could not apply (unreadable, of an
-- unknown type or election, a value the database refuses, a bug), each written in the same
-- transaction as the position that passes it. A rebuild (a new version) tries them again.
--
-- The tally's elections gain what stepped results need (domain/publication.py): how many
-- ballot entries were counted, and the statistics as last published.

CREATE TABLE projection_set_aside (
    name text NOT NULL,
    version integer NOT NULL,
    position bigint NOT NULL,
    election_id uuid,          -- NULL: the entry does not say legibly which election
    type text NOT NULL,
    reason text NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, position)
);
CREATE INDEX projection_set_aside_election_idx ON projection_set_aside (election_id);

CREATE OR REPLACE FUNCTION create_tally_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        CREATE TABLE %I.elections (
            election_id uuid PRIMARY KEY,
            rules jsonb NOT NULL,
            closed_at bigint,
            entries bigint NOT NULL DEFAULT 0,
            published_position bigint NOT NULL DEFAULT 0,
            published_counters jsonb
        )$sql$, target);
    EXECUTE format($sql$
        CREATE TABLE %I.ballots (
            ballot_id uuid PRIMARY KEY,
            election_id uuid NOT NULL,
            vote jsonb,
            version integer NOT NULL,
            position bigint NOT NULL,
            recorded_at timestamptz NOT NULL
        )$sql$, target);
    EXECUTE format('CREATE INDEX ON %I.ballots (election_id)', target);
    EXECUTE format($sql$
        CREATE TABLE %I.counters (
            election_id uuid NOT NULL,
            key text NOT NULL,
            value bigint NOT NULL,
            PRIMARY KEY (election_id, key)
        )$sql$, target);
    EXECUTE format($sql$
        CREATE TABLE %I.late_ballots (
            position bigint PRIMARY KEY,
            election_id uuid NOT NULL,
            ballot_id uuid NOT NULL,
            version integer NOT NULL,
            vote jsonb,
            recorded_at timestamptz NOT NULL
        )$sql$, target);
    EXECUTE format('CREATE INDEX ON %I.late_ballots (election_id)', target);
END;
$$;

-- Tally versions built before this migration: their elections were all created with exact
-- live results (the rules they pinned say so), which need no published statistics.
DO $$
DECLARE
    target text;
BEGIN
    FOR target IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'proj\_tally\_v%' LOOP
        EXECUTE format(
            'ALTER TABLE %I.elections ADD COLUMN entries bigint NOT NULL DEFAULT 0, '
            'ADD COLUMN published_position bigint NOT NULL DEFAULT 0, '
            'ADD COLUMN published_counters jsonb', target);
    END LOOP;
END;
$$;

-- The read_models views were created with SELECT *, which PostgreSQL expands when the view
-- is made: re-point the tally's elections view so that it shows the new columns.
DO $$
DECLARE
    active integer;
BEGIN
    SELECT active_version INTO active FROM projections WHERE name = 'tally';
    IF active IS NOT NULL THEN
        EXECUTE 'DROP VIEW IF EXISTS read_models.tally_elections';
        EXECUTE format('CREATE VIEW read_models.tally_elections AS SELECT * FROM %I.elections',
                       'proj_tally_v' || active);
    END IF;
END;
$$;
