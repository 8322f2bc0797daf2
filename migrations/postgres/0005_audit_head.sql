-- Schema 5 (PostgreSQL only): the audit chain head as one row. Every write
-- transaction locks it first (SELECT ... FOR UPDATE) and an append moves it,
-- so the audited writes of every node are serialized on it and the chain
-- stays linear (decision 0030). SQLite's BEGIN IMMEDIATE does the same for
-- the one file, which has no such row.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
SELECT 1, COALESCE(MAX(seq), 0),
       COALESCE((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), repeat('0', 64))
FROM audit_log;
