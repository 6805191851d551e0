-- Projections: their registry, their tracking positions, the relay's position, and the
-- shapes of their read-model tables.
--
-- Each projection version lives in a schema of its own (proj_<name>_v<version>), created by
-- the create_<name>_tables(schema) function below, so that a blue/green rebuild can build a
-- new version beside the one serving. Readers query stable views in the read_models
-- schema, which point at the active version; switching versions replaces the views in one
-- transaction.

CREATE TABLE projections (
    name text PRIMARY KEY,
    active_version integer,
    building_version integer,
    state text NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'rebuilding', 'failed')),
    detail text,
    rebuild_started_at timestamptz,
    rebuild_position bigint,
    rebuild_head bigint,
    rebuild_rate double precision,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The last log position applied to each version, written in the same transaction as the
-- read-model rows it covers: that is what makes a redelivered message harmless.
CREATE TABLE projection_positions (
    name text NOT NULL,
    version integer NOT NULL,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Poison messages a projection refused, with the reason (the broker's dead-letter queue
-- holds the message itself).
CREATE TABLE projection_rejections (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    message_after bigint,
    message_last bigint,
    reason text NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relay_positions (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE SCHEMA read_models;

-- tally: per election its pinned rules and close position, the current ballot of every
-- voter (cast vote records), the sufficient statistics as counters (domain.tabulation's
-- Tally.counters keys), and the ballots that came after the close.
CREATE FUNCTION create_tally_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        CREATE TABLE %I.elections (
            election_id uuid PRIMARY KEY,
            rules jsonb NOT NULL,
            closed_at bigint
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

-- catalog: one row per election, for listings and dashboards.
CREATE FUNCTION create_catalog_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        CREATE TABLE %I.elections (
            election_id uuid PRIMARY KEY,
            title text NOT NULL,
            method text NOT NULL,
            rules jsonb NOT NULL,
            status text NOT NULL,
            created_at timestamptz NOT NULL,
            opened_at timestamptz,
            closed_at timestamptz,
            close_position bigint,
            tokens_issued integer NOT NULL DEFAULT 0,
            ballots_cast integer NOT NULL DEFAULT 0,
            revisions integer NOT NULL DEFAULT 0,
            withdrawals integer NOT NULL DEFAULT 0,
            late_ballots integer NOT NULL DEFAULT 0,
            last_ballot_at timestamptz,
            position bigint NOT NULL
        )$sql$, target);
END;
$$;

-- statistics: ballots per election and hour, for operators' dashboards.
CREATE FUNCTION create_statistics_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($sql$
        CREATE TABLE %I.closes (
            election_id uuid PRIMARY KEY,
            position bigint NOT NULL
        )$sql$, target);
    EXECUTE format($sql$
        CREATE TABLE %I.vote_statistics (
            election_id uuid NOT NULL,
            hour timestamptz NOT NULL,
            ballots integer NOT NULL DEFAULT 0,
            revisions integer NOT NULL DEFAULT 0,
            withdrawals integer NOT NULL DEFAULT 0,
            late integer NOT NULL DEFAULT 0,
            last_vote_at timestamptz NOT NULL,
            PRIMARY KEY (election_id, hour)
        )$sql$, target);
END;
$$;
