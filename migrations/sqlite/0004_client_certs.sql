-- Schema 4: API clients bound to a TLS client certificate (mTLS identities,
-- decision 0022). A client is bound by the SHA-256 of one DER certificate
-- (cert_sha256), or by the subject and issuer distinguished names of its
-- certificates (cert_subject + cert_issuer, in orgkey's canonical RFC 4514
-- form), or not at all. require_cert: the bearer token alone is refused;
-- the client needs its certificate and its token. It is kept when the
-- binding is removed, so unbinding such a client locks it out instead of
-- making its token work alone.

ALTER TABLE api_clients ADD COLUMN cert_sha256 TEXT
    CHECK (cert_sha256 IS NULL OR length(cert_sha256) = 64);
ALTER TABLE api_clients ADD COLUMN cert_subject TEXT
    CHECK (cert_subject IS NULL OR length(cert_subject) > 0);
ALTER TABLE api_clients ADD COLUMN cert_issuer TEXT
    CHECK (cert_issuer IS NULL OR length(cert_issuer) > 0);
ALTER TABLE api_clients ADD COLUMN require_cert BOOLEAN NOT NULL DEFAULT FALSE;

-- One certificate identifies at most one client: no two clients share a
-- fingerprint, or a subject under the same issuer.
CREATE UNIQUE INDEX api_clients_cert_sha256 ON api_clients (cert_sha256)
    WHERE cert_sha256 IS NOT NULL;
CREATE UNIQUE INDEX api_clients_cert_name ON api_clients (cert_subject, cert_issuer)
    WHERE cert_subject IS NOT NULL;
