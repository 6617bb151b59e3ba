-- Convergence (the console, issue 18): when each node first held each
-- version it moved to. One row per change of a node's acked version (a
-- reconnect that ACKs the version it already held adds none); the newest
-- 100 per node are kept (trimmed on write).
CREATE TABLE node_acks (
    id          BIGSERIAL PRIMARY KEY,
    node_id     TEXT NOT NULL,
    version     BIGINT NOT NULL,
    -- Unix milliseconds at which the control plane received the ACK.
    at          BIGINT NOT NULL
);

CREATE INDEX node_acks_by_version ON node_acks (version, at);
CREATE INDEX node_acks_by_node ON node_acks (node_id, id);
