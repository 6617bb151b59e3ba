-- Sentinel control plane schema (PostgreSQL). Nothing is ever deleted by
-- apply or rollback: versions and activations only grow.

CREATE TABLE config_versions (
    number      BIGINT PRIMARY KEY,
    hash        TEXT NOT NULL,
    source      TEXT NOT NULL,
    file_name   TEXT NOT NULL,
    resources   BYTEA NOT NULL,
    author      TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE activations (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL,
    from_version BIGINT,
    to_version   BIGINT NOT NULL REFERENCES config_versions (number),
    actor        TEXT NOT NULL,
    message      TEXT NOT NULL,
    at           BIGINT NOT NULL
);

CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    region          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    build_version   TEXT NOT NULL,
    replica         TEXT NOT NULL,
    connected       BIGINT NOT NULL,
    acked_version   BIGINT,
    acked_hash      TEXT,
    nack_version    BIGINT,
    nack_resource   TEXT,
    nack_error      TEXT,
    nack_at         BIGINT,
    last_seen       BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE audit (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
