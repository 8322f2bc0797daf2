-- Schema 5: change counters for what serving nodes keep in memory. Every
-- change to api_clients bumps the 'api_clients' counter in the same
-- transaction; a node re-reads its copy of the client table when the
-- counter has moved (decision 0025). Portable SQL.

CREATE TABLE change_counters (
    name       TEXT PRIMARY KEY,
    generation BIGINT NOT NULL
);

INSERT INTO change_counters (name, generation) VALUES ('api_clients', 0);
