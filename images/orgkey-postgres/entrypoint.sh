#!/bin/bash
# Entry point of the orgkey-postgres:15 image (scripts/images.sh copies it to
# /usr/local/bin/orgkey-postgres-entrypoint). Runs as the postgres user.
#
# A TEST FIXTURE: at the first start it creates a cluster in $PGDATA with
# trust authentication for every address (anyone on the container network is
# let in as any role: never expose it), the login role $ORGKEY_PG_USER
# (default orgkey) and the database $ORGKEY_PG_DATABASE (default orgkey) owned
# by it, so `postgres://orgkey@HOST:5432/orgkey` is a store URL orgkey can
# create its schema in. PostgreSQL then runs in the foreground and logs "database
# system is ready to accept connections" to stderr when it takes connections.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
database=${ORGKEY_PG_DATABASE:-orgkey}
user=${ORGKEY_PG_USER:-orgkey}
bin=/usr/lib/postgresql/15/bin
case "$database" in
  '' | [!a-z_]* | *[!a-z0-9_]*)
    echo "orgkey-postgres: ORGKEY_PG_DATABASE must be a plain lower-case name ([a-z_][a-z0-9_]*), not '$database'" >&2
    exit 2
    ;;
esac
case "$user" in
  '' | [!a-z_]* | *[!a-z0-9_]*)
    echo "orgkey-postgres: ORGKEY_PG_USER must be a plain lower-case name ([a-z_][a-z0-9_]*), not '$user'" >&2
    exit 2
    ;;
esac

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "orgkey-postgres: first start: initdb in $PGDATA (trust authentication; a test fixture)" >&2
  "$bin/initdb" -D "$PGDATA" --username=postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<'EOF'
listen_addresses = '*'
# Tests run several appliances against it.
max_connections = 200
EOF
  cat >"$PGDATA/pg_hba.conf" <<'EOF'
local all all              trust
host  all all 0.0.0.0/0    trust
host  all all ::/0         trust
EOF
  {
    if [ "$user" != postgres ]; then echo "CREATE ROLE \"$user\" LOGIN"; fi
    if [ "$database" != postgres ]; then echo "CREATE DATABASE \"$database\" OWNER \"$user\""; fi
  } | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -k /tmp "$@"
