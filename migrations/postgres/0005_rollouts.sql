-- Staged rollouts (issue 17): a new version reaches the fleet stage by
-- stage, behind gates, and is activated only when the last stage passed.
-- While a rollout runs, `activations` still names the previous version:
-- every node outside the rollout's admitted nodes is served that one.

CREATE TABLE rollouts (
    id               BIGSERIAL PRIMARY KEY,
    -- running | paused | completed | failed | aborted
    state            TEXT NOT NULL,
    from_version     BIGINT REFERENCES config_versions (number),
    to_version       BIGINT NOT NULL REFERENCES config_versions (number),
    -- The plan as JSON (sentinel_api::RolloutPlan: stages, gates).
    plan             TEXT NOT NULL,
    -- Index of the stage being rolled out (0-based).
    stage            BIGINT NOT NULL,
    -- When the current stage began (its progress deadline counts from here).
    stage_started_at BIGINT NOT NULL,
    -- When every selected node of the current stage had ACKed (bake
    -- counts from here); NULL while waiting for ACKs.
    stage_acked_at   BIGINT,
    actor            TEXT NOT NULL,
    message          TEXT NOT NULL,
    -- Why it ended (failed: node, gate and numbers).
    reason           TEXT,
    -- Failed only: the gate that failed and the node it named.
    failed_gate      TEXT,
    failed_node      TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- At most one rollout runs (or is paused) at a time.
CREATE UNIQUE INDEX rollouts_one_open ON rollouts ((1)) WHERE state IN ('running', 'paused');

-- The nodes admitted to the new version, and by which stage. A node is
-- served `to_version` exactly while its rollout is open and it is listed.
CREATE TABLE rollout_nodes (
    rollout_id  BIGINT NOT NULL REFERENCES rollouts (id),
    node_id     TEXT NOT NULL,
    stage       BIGINT NOT NULL,
    admitted_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, node_id)
);

-- What happened, in order: stages started and passed, gate decisions,
-- pauses, promotions, the end.
CREATE TABLE rollout_events (
    id          BIGSERIAL PRIMARY KEY,
    rollout_id  BIGINT NOT NULL REFERENCES rollouts (id),
    at          BIGINT NOT NULL,
    stage       BIGINT,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL
);

CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);

-- A node's labels (`k=v` lines, sorted) from its hello: stages select by them.
ALTER TABLE nodes ADD COLUMN labels TEXT;
