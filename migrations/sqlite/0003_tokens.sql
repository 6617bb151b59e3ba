-- Tokens grow up (issue 10, defects 5 and 6): one table for API tokens and
-- proxy join tokens, each with an optional expiry and a revocation time.
-- Rows are never deleted: a revoked token stays listed (and keeps its name)
-- so the audit trail can name it.

-- `api` (REST API, has a role) or `join` (gRPC streams, no role).
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';
-- Join tokens only: the one node id the token may stream as; NULL means the
-- token is fleet-wide (its holder may use any node id).
ALTER TABLE api_tokens ADD COLUMN node_id TEXT;
-- Unix milliseconds; NULL means never.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
