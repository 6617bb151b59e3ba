-- Service discovery (issue 12): the current endpoint set of every
-- discovered upstream, written by the replica that leads discovery and
-- overlaid by every replica on the active configuration. Discovery changes
-- never create config versions; this is their only record.

CREATE TABLE discovered_endpoints (
    upstream        TEXT PRIMARY KEY,
    -- dns | consul | kubernetes
    source          TEXT NOT NULL,
    generation      BIGINT NOT NULL,
    -- The Endpoints resource version (hex SHA-256 of `targets`).
    hash            TEXT NOT NULL,
    -- The encoded sentinel.v1.Endpoints message.
    targets         BYTEA NOT NULL,
    -- 1 = the source failed its last refresh; targets are the last known.
    stale           BIGINT NOT NULL,
    error           TEXT,
    -- Unix milliseconds; 0 = never.
    last_success_at BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Every endpoint set pushed, compactly; pruned to the newest N per upstream.
CREATE TABLE endpoint_history (
    id              BIGSERIAL PRIMARY KEY,
    upstream        TEXT NOT NULL,
    generation      BIGINT NOT NULL,
    hash            TEXT NOT NULL,
    source          TEXT NOT NULL,
    at              BIGINT NOT NULL
);

CREATE INDEX endpoint_history_by_upstream ON endpoint_history (upstream, id);
