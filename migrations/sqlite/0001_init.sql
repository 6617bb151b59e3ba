-- Sentinel control plane schema (SQLite). Nothing is ever deleted by
-- apply or rollback: versions and activations only grow.

CREATE TABLE config_versions (
    number      INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL,
    source      TEXT NOT NULL,
    file_name   TEXT NOT NULL,
    resources   BLOB NOT NULL,
    author      TEXT NOT NULL,
    message     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE activations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    from_version INTEGER,
    to_version   INTEGER NOT NULL REFERENCES config_versions (number),
    actor        TEXT NOT NULL,
    message      TEXT NOT NULL,
    at           INTEGER NOT NULL
);

CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    region          TEXT NOT NULL,
    zone            TEXT NOT NULL,
    build_version   TEXT NOT NULL,
    replica         TEXT NOT NULL,
    connected       INTEGER NOT NULL,
    acked_version   INTEGER,
    acked_hash      TEXT,
    nack_version    INTEGER,
    nack_resource   TEXT,
    nack_error      TEXT,
    nack_at         INTEGER,
    last_seen       INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
