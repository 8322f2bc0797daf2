-- orgkey store, schema 1. Portable SQL (SQLite now, PostgreSQL later):
-- BIGINT times in Unix seconds, TEXT hex for hashes and ids.

CREATE TABLE org_keys (
    fingerprint        TEXT PRIMARY KEY,
    state              TEXT NOT NULL CHECK (state IN ('active', 'superseded')),
    algorithm          TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    cert               TEXT NOT NULL,
    primary_id         TEXT NOT NULL,
    signing_id         TEXT NOT NULL,
    encryption_id      TEXT NOT NULL,
    primary_created    BIGINT NOT NULL,
    signing_created    BIGINT NOT NULL,
    encryption_created BIGINT NOT NULL,
    exportable         BOOLEAN NOT NULL,
    generated_at       BIGINT NOT NULL,
    superseded_at      BIGINT
);
-- At most one active org key.
CREATE UNIQUE INDEX org_keys_one_active ON org_keys (state) WHERE state = 'active';

CREATE TABLE api_clients (
    name        TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE audit_log (
    seq             BIGINT PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,
    operation       TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    key_fingerprint TEXT,
    data_digest     TEXT,
    detail          TEXT,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
);
