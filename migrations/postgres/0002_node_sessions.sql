-- Fleet truth (issue 10): only the newest session of a node changes its row,
-- replicas prove they are alive, and NACKs keep a bounded history.

-- The epoch (microseconds at session start) of the session that owns the
-- row: a hello writes only if it is newer; every other update of a session
-- changes the row only while its epoch matches.
ALTER TABLE nodes ADD COLUMN session_epoch BIGINT;

-- One row per control-plane replica, with a heartbeat written every ~2 s.
-- A node counts as connected only while its replica's heartbeat is recent.
CREATE TABLE replicas (
    name        TEXT PRIMARY KEY,
    heartbeat   BIGINT NOT NULL,
    started_at  BIGINT NOT NULL
);

-- NACK history: the newest 100 per node are kept (trimmed on write).
CREATE TABLE node_events (
    id          BIGSERIAL PRIMARY KEY,
    node_id     TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    resource    TEXT NOT NULL,
    error       TEXT NOT NULL,
    at          BIGINT NOT NULL
);

CREATE INDEX node_events_by_node ON node_events (node_id, id);
