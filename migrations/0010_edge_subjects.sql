-- The HTTP edge keeps no client address, and a sign-in ends when the account changes.
--
-- rate_limits: rows are now keyed by an HMAC of their subject (an address, an account)
-- under CARDINAL_SECRET (api/ratelimit.py), because a row's time says when its key last
-- voted, and an address beside it linked a voter to their ballot for any reader of the
-- database. The rows written as addresses go: every client starts with a full quota once.
DELETE FROM rate_limits;

-- refresh_tokens: each names the account's generation (an HMAC of the administrator's
-- address and password under JWT_SECRET_KEY, api/edge.py); a refresh under another
-- generation (the password or the key changed) fails, so changing either ends every
-- sign-in. Tokens issued before this migration have none, and end now.
ALTER TABLE refresh_tokens ADD COLUMN generation text NOT NULL DEFAULT '';
