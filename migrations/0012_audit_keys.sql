-- The public key of every audit key that signed a checkpoint, by its key id, so that an
-- export can list the public key of each key id its checkpoints name (after the key is
-- rotated, earlier checkpoints name the earlier key). Written by the sealer beside each
-- checkpoint it signs. Never a source of trust: `audit verify` trusts only the keys an
-- auditor gives (or the verifier's own CARDINAL_AUDIT_KEY); a listed key is a hint of
-- which public keys to ask the deployment for.
CREATE TABLE audit_keys (
    key_id text PRIMARY KEY,
    algorithm text NOT NULL,
    public_key bytea NOT NULL,
    first_signed_at timestamptz NOT NULL DEFAULT now()
);
