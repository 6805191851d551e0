-- A fingerprint of the CARDINAL_SECRET this store's voter keys are made with, so that a
-- process started with another secret (a restore into a deployment with a different one, a
-- lost development credentials.json) is refused at start instead of serving: with another
-- secret every voter token was refused 403 and every client voter could cast a second
-- ballot, and nothing noticed.
--
-- One row at most (the key is always true). The first process of a release with this
-- migration to start against the store writes it (INSERT ... ON CONFLICT DO NOTHING:
-- processes starting at once all read the one row that won); each process that uses the
-- secret compares its own and refuses to start on a difference. `cardinal accept-secret`
-- replaces it, for a deliberate change of the secret between elections.
--
-- The fingerprint is HMAC-SHA256 of a fixed label under a key derived from the secret
-- (infra/runtime/fingerprint.py): the secret is 32+ characters, so it cannot be found from it,
-- and it is no key of any other use (voter keys, relay pages, rate-limit rows).
CREATE TABLE secret_fingerprint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    fingerprint text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
