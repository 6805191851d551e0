-- The HTTP edge: rate limits shared by every API process, and the administrator's sessions.
--
-- rate_limits: one row per limited key (a policy and a client address, or an account), the
-- GCRA "theoretical arrival time" as epoch seconds, and the last check's request (wanted
-- units, the quota's step and span: the statement's DO UPDATE reads them from `excluded`).
-- UNLOGGED: no WAL per check, emptied after a crash and absent on standbys, which for
-- limits only means a fresh quota. A row whose tat is in the past means "full quota", the
-- same as no row, so housekeeping may delete it at any time. Nothing but the key is
-- indexed, so updates stay HOT.
CREATE UNLOGGED TABLE rate_limits (
    key text PRIMARY KEY,
    tat double precision NOT NULL,
    granted integer NOT NULL,
    wanted integer NOT NULL,
    step double precision NOT NULL,
    span double precision NOT NULL
) WITH (fillfactor = 70);

-- refresh_tokens: the administrator's refresh tokens, stored as SHA-256 digests. Each
-- refresh uses its token up and issues the next one in the same family; presenting a used
-- token again (a stolen copy) revokes the whole family, as does a logout.
CREATE TABLE refresh_tokens (
    digest bytea PRIMARY KEY,
    family uuid NOT NULL,
    subject text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
