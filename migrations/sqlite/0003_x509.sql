-- Schema 3: the org cert (X.509 CA), S/MIME user certificates, revocations, CRLs.

-- Org certs: at most one active; retired ones stay for verifying and revoking
-- what they issued until that expires.
CREATE TABLE org_certs (
    fingerprint  TEXT PRIMARY KEY,          -- hex SHA-256 of the DER certificate
    org_key      TEXT NOT NULL,             -- fingerprint of the org key it belongs to
    state        TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    source       TEXT NOT NULL CHECK (source IN ('self-signed', 'ca-issued', 'imported')),
    key_id       TEXT NOT NULL,             -- CKA_ID (hex) of its key pair in the token
    cert         TEXT NOT NULL,             -- PEM
    chain        TEXT NOT NULL,             -- PEM of the issuers above it ('' if none)
    subject      TEXT NOT NULL,
    not_after    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT
);
CREATE UNIQUE INDEX org_certs_one_active ON org_certs (state) WHERE state = 'active';

-- Keys generated for a CSR to an external CA, waiting for its answer.
CREATE TABLE org_cert_requests (
    key_id      TEXT PRIMARY KEY,
    org_key     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    csr         TEXT NOT NULL,              -- PEM
    created_at  BIGINT NOT NULL
);

-- User certificates. A row is written as 'pending' with the to-be-signed
-- bytes BEFORE the token signs, and becomes 'issued' with the certificate
-- after the signature verified; a failed signing marks it 'abandoned'. So a
-- serial is never reused and no signed certificate is missing from here.
CREATE TABLE user_certs (
    serial       TEXT PRIMARY KEY,          -- lower-case hex, unique across org certs
    org_cert     TEXT NOT NULL REFERENCES org_certs (fingerprint),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'issued', 'revoked', 'abandoned')),
    email        TEXT NOT NULL,             -- first email
    emails       TEXT NOT NULL,             -- all emails, comma-separated
    key_id       TEXT NOT NULL,             -- hex SHA-256 of the SubjectPublicKeyInfo
    spki         TEXT NOT NULL,             -- hex DER SubjectPublicKeyInfo (renewal)
    common_name  TEXT,
    source       TEXT NOT NULL CHECK (source IN ('csr', 'openpgp')),
    tbs          TEXT NOT NULL,             -- hex DER TBSCertificate
    cert         TEXT,                      -- PEM once issued
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    issued_at    BIGINT,
    revoked_at   BIGINT,
    reason       TEXT
);
CREATE INDEX user_certs_email ON user_certs (email);
CREATE INDEX user_certs_key ON user_certs (key_id);
CREATE INDEX user_certs_org_cert ON user_certs (org_cert, state);

CREATE TABLE crls (
    org_cert     TEXT NOT NULL REFERENCES org_certs (fingerprint),
    number       BIGINT NOT NULL,
    crl          TEXT NOT NULL,             -- hex DER
    this_update  BIGINT NOT NULL,
    next_update  BIGINT NOT NULL,
    PRIMARY KEY (org_cert, number)
);
