#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks: Debian's
# postgresql package (installed when missing), initdb into a temp dir,
# listening on a free loopback port and a Unix socket in that dir, trust
# authentication for the superuser `postgres` on loopback, and a role
# `orgkey_pw` that must log in with a password (scram-sha-256; its password
# is in DIR/orgkey_pw.password) for the tests of [store] password_file.
# initdb refuses to run as root: as root the cluster runs as the `postgres`
# system user, and DIR belongs to it.
#
#   scripts/postgres.sh run CMD...   start a cluster, run CMD with
#                                    ORGKEY_TEST_STORE_URL (the superuser's
#                                    URL) and ORGKEY_TEST_PG_DIR exported, then
#                                    stop the cluster and remove it (also on
#                                    failure or Ctrl-C)
#   scripts/postgres.sh start DIR    a new cluster in DIR (created, empty);
#                                    prints its URL last
#   scripts/postgres.sh stop DIR     stops it (fast shutdown), keeps DIR
#   scripts/postgres.sh resume DIR   starts a stopped cluster again, on the
#                                    same port
#   scripts/postgres.sh remove DIR   stops it and removes DIR
#
# Nothing here touches a cluster it did not create.
set -euo pipefail

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$d" ] || [ ! -x "$d/initdb" ]; then
    return 1
  fi
  echo "$d"
}

ensure_server() {
  if ! pg_bindir >/dev/null; then
    echo "installing Debian's postgresql (server) package" >&2
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || { echo "need root or sudo to install postgresql" >&2; exit 1; }
      sudo=(sudo)
    fi
    # No cluster of the package's own: ours live in temp dirs.
    "${sudo[@]}" mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf; then
      echo 'create_main_cluster = false' | "${sudo[@]}" tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      postgresql postgresql-client >/dev/null
  fi
}

# Runs a command as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_start() {
  local dir=$1 bin port
  bin=$(pg_bindir)
  port=$(cat "$dir/port")
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
}

cmd_start() {
  local dir=$1 bin port
  ensure_server
  bin=$(pg_bindir)
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || { echo "$dir is not empty" >&2; exit 1; }
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
    # The cluster's owner must reach DIR through its parents (mktemp makes
    # them 0700 only for DIR itself).
    chmod 0755 "$dir"
  fi
  port=$(free_port)
  as_owner sh -c "echo $port > '$dir/port'"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 --no-sync >/dev/null
  # A throwaway cluster: durability is not what the tests measure (they
  # kill orgkey, never the database host), speed is.
  as_owner sh -c "cat >> '$dir/data/postgresql.conf'" <<EOF
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 64MB
log_min_messages = warning
EOF
  # The password role first; trust for everything else on this machine.
  as_owner sh -c "cat > '$dir/data/pg_hba.conf'" <<EOF
host    all  orgkey_pw  127.0.0.1/32  scram-sha-256
local   all  all                      trust
host    all  all        127.0.0.1/32  trust
EOF
  pg_start "$dir"
  local pw
  pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  as_owner sh -c "umask 077; printf '%s\n' '$pw' > '$dir/orgkey_pw.password'"
  if [ "$(id -u)" -eq 0 ]; then chmod 0644 "$dir/orgkey_pw.password"; fi
  "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE orgkey_pw LOGIN CREATEDB PASSWORD '$pw'" >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

cmd_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_owner "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
}

cmd_remove() {
  local dir=$1
  cmd_stop "$dir"
  rm -rf "$dir"
}

cmd_run() {
  local dir url
  dir=$(mktemp -d /tmp/orgkey-pg.XXXXXX)
  # shellcheck disable=SC2064
  trap "cmd_remove '$dir'" EXIT
  trap 'exit 130' INT TERM
  url=$(cmd_start "$dir" | tail -1)
  echo "throwaway PostgreSQL at $url (data in $dir)" >&2
  ORGKEY_TEST_STORE_URL="$url" ORGKEY_TEST_PG_DIR="$dir" "$@"
}

case "${1:-}" in
  run) shift; cmd_run "$@" ;;
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  resume) pg_start "$2" ;;
  remove) cmd_remove "$2" ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
