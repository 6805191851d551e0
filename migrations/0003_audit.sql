-- The audit trail beside the log: one chain link per entry, signed checkpoints, and the
-- election each ballot stream belongs to (so one election's entries can be read and
-- replayed without scanning the whole log).

CREATE TABLE audit_chain (
    position bigint PRIMARY KEY,
    entry_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE UNIQUE INDEX audit_chain_entry_hash_idx ON audit_chain (entry_hash);

CREATE TABLE audit_checkpoints (
    id bigserial PRIMARY KEY,
    position bigint NOT NULL,
    head_hash bytea NOT NULL,
    key_id text NOT NULL,
    signature bytea NOT NULL,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_checkpoints_position_idx ON audit_checkpoints (position);

CREATE TABLE election_streams (
    stream_id uuid PRIMARY KEY,
    election_id uuid NOT NULL
);
CREATE INDEX election_streams_election_idx ON election_streams (election_id);
