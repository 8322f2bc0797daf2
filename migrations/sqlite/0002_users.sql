-- Schema 2: user keys of the managed domains and their org certifications.

-- One row per user key (OpenPGP certificate), as served: with its current
-- org certifications, pruned of expired and superseded ones.
CREATE TABLE user_keys (
    fingerprint   TEXT PRIMARY KEY,
    keyid         TEXT NOT NULL,
    cert          TEXT NOT NULL,           -- armored public certificate
    certified_by  TEXT,                    -- org key that made the newest certifications
    cert_expires  BIGINT,                  -- earliest expiry among them (NULL: none)
    version       BIGINT NOT NULL,         -- optimistic concurrency: bumped on each write
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX user_keys_keyid ON user_keys (keyid);

-- One row per managed email address: which key it is bound to, whether
-- orgkey still certifies it, and when it was last active.
CREATE TABLE users (
    email         TEXT PRIMARY KEY,        -- normalized: lower-case, punycode domain
    fingerprint   TEXT NOT NULL REFERENCES user_keys (fingerprint),
    user_id       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('active', 'removed')),
    last_activity BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    removed_at    BIGINT
);
CREATE INDEX users_fingerprint ON users (fingerprint);
