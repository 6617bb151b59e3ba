-- A config change is one trace (issue 15). Each activation keeps the W3C
-- traceparent of the span that activated it, so every replica streams the
-- same trace context to its proxies (NULL: activated before this column,
-- or by a control plane that had no span). `trace_steps` is the control
-- plane's own record of the change's steps (JSON: name, start and end in
-- Unix milliseconds), shown by `GET /v1/configs/{number}/trace`. A staged
-- rollout keeps the trace of the apply that started it; the activation
-- that completes it carries the same.
ALTER TABLE activations ADD COLUMN trace_parent TEXT;
ALTER TABLE activations ADD COLUMN trace_steps TEXT;
ALTER TABLE rollouts ADD COLUMN trace_parent TEXT;
ALTER TABLE rollouts ADD COLUMN trace_steps TEXT;

-- The per-node timeline of each response a control plane pushed and the
-- proxy answered: when it was pushed (control plane clock), when the proxy
-- received, built and swapped it (proxy clock, from the ACK/NACK; NULL when
-- the proxy did not say), when the answer arrived (control plane clock),
-- the outcome (`ack` | `nack`) and a NACK's error. Written by the node
-- writer with the session rule of every node write; the newest 100 per
-- node are kept (trimmed on write).
CREATE TABLE node_pushes (
    id           BIGSERIAL PRIMARY KEY,
    node_id      TEXT NOT NULL,
    region       TEXT NOT NULL,
    epoch        BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    hash         TEXT NOT NULL,
    pushed_at    BIGINT NOT NULL,
    received_at  BIGINT,
    built_at     BIGINT,
    swapped_at   BIGINT,
    answered_at  BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    error        TEXT
);

CREATE INDEX node_pushes_by_version ON node_pushes (version, node_id, id);
CREATE INDEX node_pushes_by_node ON node_pushes (node_id, id);
