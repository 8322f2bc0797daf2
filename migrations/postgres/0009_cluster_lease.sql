-- Schema 9 on PostgreSQL (8 on SQLite): the leader lease and the cluster's members
-- (decision 0038). One lease row, 'leader': the node holding it runs the
-- singleton jobs (maintenance, CRL refresh, org key renewal, scheduled
-- state backups), and every write of those jobs checks, in its own
-- transaction, that the row still names the holding process and epoch
-- (the fencing token). `instance` names the holding process (random per
-- start), `holder` its node id; expires_at and the members' times are unix
-- milliseconds of the lease clock: the database's on PostgreSQL, the
-- store's clock on SQLite (one appliance, always the leader). Runtime
-- state: not part of logical snapshots. Portable SQL.

CREATE TABLE cluster_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    instance   TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

INSERT INTO cluster_lease (name, holder, instance, epoch, expires_at)
VALUES ('leader', '', '', 0, 0);

CREATE TABLE cluster_members (
    node           TEXT PRIMARY KEY,
    instance       TEXT NOT NULL,
    role           TEXT NOT NULL,
    epoch          BIGINT NOT NULL,
    started_at     BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);
