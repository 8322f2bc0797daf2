-- Schema 7 (8 on PostgreSQL): the ignition back-off, shared by every node
-- of the store, so wrong passphrases count across the cluster and guesses
-- do not multiply by the number of nodes. One row; blocked_until is unix
-- milliseconds (0: not blocked). Portable SQL.

CREATE TABLE ignition_backoff (
    id            BIGINT PRIMARY KEY,
    failures      BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL
);

INSERT INTO ignition_backoff (id, failures, blocked_until) VALUES (1, 0, 0);
