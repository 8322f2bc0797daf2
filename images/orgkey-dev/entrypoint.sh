#!/bin/bash
# Entry point of the orgkey:dev image (scripts/images.sh copies it to
# /usr/local/bin/orgkey-entrypoint).
#
# With a config file mounted (ORGKEY_CONFIG, default /etc/orgkey/orgkey.toml)
# the container is a normal appliance: `orgkey serve` with that config, sealed
# until an operator ignites it, TLS required off loopback as everywhere.
#
# Without one it is a TEST FIXTURE: it makes a throwaway appliance with a
# SoftHSM2 token, an org key, optionally an org cert, an admin and a gateway
# client, ignites it through its own API and logs "orgkey dev appliance ready".
# Its passphrases are random and kept in the container; never use it for keys
# that matter.
#
# CLUSTER MODE (still a test fixture): ORGKEY_DEV_CLUSTER=first or join with
# ORGKEY_DEV_STORE_URL=postgres://USER@HOST:PORT/DB keeps the store in that
# PostgreSQL database, shared by several containers, each with a SoftHSM2
# token of its own holding the same org key (docs/decisions/0041). The
# single `first` node creates the org key and the clients and writes a key
# backup, its backup passphrase, the tokens and the public material into the
# shared directory ORGKEY_DEV_SHARED (a volume every node mounts); `join`
# nodes wait for it, join the store (`orgkey init --store-url`), restore the
# org key into their own token (`orgkey backup restore-keys`) and serve the
# same clients. Roles are explicit so that two nodes never race to create
# an org key.
set -euo pipefail

config=${ORGKEY_CONFIG:-/etc/orgkey/orgkey.toml}
if [ -f "$config" ]; then
  export ORGKEY_CONFIG=$config
  exec orgkey serve "$@"
fi

say() { echo "orgkey-dev: $*" >&2; }

algorithm=${ORGKEY_DEV_ALGORITHM:-p256}
case "$algorithm" in
  p256 | p384 | ed25519 | rsa3072 | rsa4096) ;;
  *) say "ORGKEY_DEV_ALGORITHM must be p256, p384, ed25519, rsa3072 or rsa4096, not '$algorithm'"; exit 2 ;;
esac
# Comma- or space-separated.
IFS=', ' read -r -a listed <<<"${ORGKEY_DEV_DOMAINS:-example.com}"
domains=()
for d in "${listed[@]}"; do [ -n "$d" ] && domains+=("$d"); done
((${#domains[@]})) || { say "ORGKEY_DEV_DOMAINS names no domain"; exit 2; }
org_cert=${ORGKEY_DEV_ORG_CERT:-0}
case "$org_cert" in 0 | 1) ;; *) say "ORGKEY_DEV_ORG_CERT must be 0 or 1, not '$org_cert'"; exit 2 ;; esac

# Cluster options, all checked before anything is created.
role=${ORGKEY_DEV_CLUSTER:-}
store_url=${ORGKEY_DEV_STORE_URL:-}
store_password_file=${ORGKEY_DEV_STORE_PASSWORD_FILE:-}
node_id=${ORGKEY_DEV_NODE_ID:-}
shared=${ORGKEY_DEV_SHARED:-/var/lib/orgkey-shared}
join_timeout=${ORGKEY_DEV_JOIN_TIMEOUT:-120}
store_wait=${ORGKEY_DEV_STORE_WAIT:-60}
busy_timeout=${ORGKEY_DEV_STORE_BUSY_TIMEOUT:-}
case "$role" in
  '' | first | join) ;;
  *) say "ORGKEY_DEV_CLUSTER must be first (creates the org key) or join (takes it from the first node), not '$role'"; exit 2 ;;
esac
if [ -n "$role" ] && [ -z "$store_url" ]; then
  say "ORGKEY_DEV_CLUSTER=$role needs ORGKEY_DEV_STORE_URL (postgres://USER@HOST:PORT/DB), the database the nodes share"
  exit 2
fi
if [ -z "$role" ] && [ -n "$store_url" ]; then
  say "ORGKEY_DEV_STORE_URL is set without ORGKEY_DEV_CLUSTER: say which node creates the org key (first) and which take it from that one (join)"
  exit 2
fi
if [ -n "$store_url" ]; then
  case "$store_url" in
    postgres://* | postgresql://*) ;;
    *) say "ORGKEY_DEV_STORE_URL must be a postgres:// URL, not '$store_url'"; exit 2 ;;
  esac
fi
if [ -n "$store_password_file" ] && [ ! -r "$store_password_file" ]; then
  say "ORGKEY_DEV_STORE_PASSWORD_FILE=$store_password_file is not a readable file"
  exit 2
fi
if [ -n "$node_id" ] && [[ ! "$node_id" =~ ^[A-Za-z0-9._-]{1,64}$ ]]; then
  say "ORGKEY_DEV_NODE_ID must be 1 to 64 letters, digits, '.', '-' or '_', not '$node_id'"
  exit 2
fi
for n in join_timeout store_wait; do
  if [[ ! "${!n}" =~ ^[1-9][0-9]{0,4}$ ]]; then
    say "ORGKEY_DEV_${n^^} must be a number of seconds (1 to 99999), not '${!n}'"
    exit 2
  fi
done
if [ -n "$busy_timeout" ]; then
  [ -n "$role" ] || { say "ORGKEY_DEV_STORE_BUSY_TIMEOUT applies to a cluster node (ORGKEY_DEV_CLUSTER) only"; exit 2; }
  [[ "$busy_timeout" =~ ^[1-9][0-9]{0,5}(ms|s)$ ]] || {
    say "ORGKEY_DEV_STORE_BUSY_TIMEOUT must be a duration such as 2s or 500ms, not '$busy_timeout'"
    exit 2
  }
fi
if [ -n "$role" ] && [ "$algorithm" = ed25519 ]; then
  # Nodes share the org key through a key backup, and SoftHSM2 2.6 cannot
  # wrap EdDSA private keys (CKR_KEY_NOT_WRAPPABLE).
  say "ORGKEY_DEV_CLUSTER needs an org key SoftHSM2 can back up: p256, p384, rsa3072 or rsa4096, not ed25519"
  exit 2
fi
if [ -n "$role" ] && [ ! -d "$shared" ]; then
  say "ORGKEY_DEV_CLUSTER=$role needs the shared directory $shared (ORGKEY_DEV_SHARED): mount one volume there on every node"
  exit 2
fi
dir=${ORGKEY_DEV_DATA:-/var/lib/orgkey-dev}
out=/run/orgkey
port=8443
url="http://127.0.0.1:$port"
export ORGKEY_CONFIG="$dir/orgkey.toml"

say "no config at $config: starting as a TEST FIXTURE (throwaway SoftHSM2 token, random passphrases kept in the container; not for production)"
[ -n "$role" ] && say "cluster mode: this node is '$role' on a shared PostgreSQL store; the key backup, its passphrase and the client tokens are in $shared (test credentials)"

umask 077
# A container restarted after its first start keeps its appliance; one whose
# first setup failed half-way is not served.
if [ -f "$ORGKEY_CONFIG" ] && [ ! -f "$dir/fixture-complete" ]; then
  say "an earlier setup of this container failed (see its first log); start a new container"
  exit 1
fi
# Waits until the database named by $store_url takes TCP connections (a
# compose file may start every container at once).
wait_for_store() {
  local rest hostport host port
  rest=${store_url#*://}
  rest=${rest#*@}
  hostport=${rest%%[/?]*}
  if [[ "$hostport" == \[* ]]; then
    host=${hostport%%]*}
    host=${host#[}
    port=${hostport##*]:}
    [ "$port" = "$hostport" ] && port=5432
  else
    host=${hostport%%:*}
    port=${hostport#*:}
    [ "$port" = "$hostport" ] && port=5432
  fi
  local deadline=$((SECONDS + store_wait))
  while [ "$SECONDS" -lt "$deadline" ]; do
    # Bounded: a connect to a host that drops packets would wait minutes.
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null && return 0
    sleep 0.2
  done
  say "the database at $host:$port (ORGKEY_DEV_STORE_URL) took no connection in ${store_wait}s"
  exit 1
}

# Creates a file's contents in a temporary name next to it, then renames:
# a joining node never reads half a file.
publish() { # src dest
  cp "$1" "$2.tmp.$$"
  chmod 0600 "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
}

if [ ! -f "$ORGKEY_CONFIG" ]; then
  if [ "$role" = first ] && [ -e "$shared/ready" ]; then
    say "$shared already holds a cluster's org key (ready is there): give a new cluster a new shared volume"
    exit 2
  fi
  if [ "$role" = first ] && [ ! -w "$shared" ]; then
    say "$shared (ORGKEY_DEV_SHARED) is not writable by user $(id -un): the first node writes the key backup there"
    exit 2
  fi
  if [ "$role" = join ]; then
    say "waiting up to ${join_timeout}s for the first node's key backup in $shared"
    for _ in $(seq $((join_timeout * 10))); do
      [ -f "$shared/ready" ] && break
      sleep 0.1
    done
    [ -f "$shared/ready" ] || { say "no key backup from a first node appeared in $shared in ${join_timeout}s"; exit 1; }
    # The cluster's managed domains are the first node's.
    read -r -a domains <"$shared/domains"
    say "joining the cluster of ${domains[*]} (the org key, its algorithm and org cert are the first node's)"
  fi
  mkdir -p "$dir/secrets" "$out"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/secrets/ignition-passphrase"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/secrets/so-pin"
  domain_args=()
  for d in "${domains[@]}"; do domain_args+=(--domain "$d"); done
  store_args=()
  if [ -n "$role" ]; then
    wait_for_store
    store_args+=(--store-url "$store_url")
    [ -n "$store_password_file" ] && store_args+=(--store-password-file "$store_password_file")
  fi
  [ -n "$node_id" ] && store_args+=(--node-id "$node_id")
  say "creating a SoftHSM2 token and the store for ${domains[*]}"
  init_out=$(orgkey init --data-dir "$dir" "${domain_args[@]}" --create-token --listen "0.0.0.0:$port" \
    --ignition-passphrase-file "$dir/secrets/ignition-passphrase" --so-pin-file "$dir/secrets/so-pin" \
    "${store_args[@]}")
  echo "$init_out"
  if [ -n "$busy_timeout" ]; then
    # Into the [store] section init wrote (its only `url =` line).
    sed -i "s|^url = .*|&\nbusy_timeout = \"$busy_timeout\"|" "$ORGKEY_CONFIG"
  fi
  joined=0
  grep -q '^joined a store' <<<"$init_out" && joined=1
  if [ "$role" = first ] && [ "$joined" = 1 ]; then
    say "ORGKEY_DEV_CLUSTER=first, but the store at ORGKEY_DEV_STORE_URL holds an org key already: give a new cluster a new database, or start this node as join"
    exit 2
  fi
  if [ "$role" = join ] && [ "$joined" = 0 ]; then
    say "ORGKEY_DEV_CLUSTER=join, but the store at ORGKEY_DEV_STORE_URL holds no org key: is the first node on another database?"
    exit 2
  fi
  if [ "$role" = join ]; then
    say "restoring the cluster's org key into this node's token from $shared/org.keys"
    orgkey backup restore-keys --in "$shared/org.keys" \
      --passphrase-file "$dir/secrets/ignition-passphrase" \
      --backup-passphrase-file "$shared/backup-passphrase"
    cp "$shared/admin.token" "$shared/gateway.token" "$dir/secrets/"
    cp "$shared/org-key.asc" "$dir/org-key.asc"
    if [ -f "$shared/org-cert.pem" ]; then cp "$shared/org-cert.pem" "$dir/org-cert.pem"; fi
  else
    say "generating the org key ($algorithm)"
    orgkey org-key generate --algorithm "$algorithm" --expires 2y \
      --uid "orgkey dev fixture <orgkey@${domains[0]}>" \
      --passphrase-file "$dir/secrets/ignition-passphrase"
    if [ "$org_cert" = 1 ]; then
      say "self-signing an org cert"
      orgkey org-cert self-sign --subject "CN=orgkey dev fixture CA,O=${domains[0]}" \
        --passphrase-file "$dir/secrets/ignition-passphrase"
    fi
    orgkey client add admin --scopes admin --token-out "$dir/secrets/admin.token"
    orgkey client add gateway --scopes sign,certify,issue,revoke --token-out "$dir/secrets/gateway.token"
    orgkey org-key export --out "$dir/org-key.asc"
    if [ "$org_cert" = 1 ]; then orgkey org-cert export --out "$dir/org-cert.pem"; fi
  fi
  if [ "$role" = first ]; then
    say "writing the key backup and the client tokens to $shared for the joining nodes"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/secrets/backup-passphrase"
    orgkey backup export-keys --out "$dir/org.keys" \
      --passphrase-file "$dir/secrets/ignition-passphrase" --so-pin-file "$dir/secrets/so-pin" \
      --backup-passphrase-file "$dir/secrets/backup-passphrase"
    publish "$dir/org.keys" "$shared/org.keys"
    publish "$dir/secrets/backup-passphrase" "$shared/backup-passphrase"
    publish "$dir/secrets/admin.token" "$shared/admin.token"
    publish "$dir/secrets/gateway.token" "$shared/gateway.token"
    publish "$dir/org-key.asc" "$shared/org-key.asc"
    echo "${domains[*]}" >"$dir/domains"
    publish "$dir/domains" "$shared/domains"
    if [ -f "$dir/org-cert.pem" ]; then publish "$dir/org-cert.pem" "$shared/org-cert.pem"; fi
    # Last: joining nodes wait for this file.
    : >"$shared/ready.tmp.$$"
    mv -f "$shared/ready.tmp.$$" "$shared/ready"
  fi
  touch "$dir/fixture-complete"
fi

# /run/orgkey is what a test reads (tokens are test credentials here). It is
# filled again at every start: /run may be a tmpfs.
mkdir -p "$out"
cp "$dir/secrets/admin.token" "$dir/secrets/gateway.token" "$dir/org-key.asc" "$out/"
[ -f "$dir/org-cert.pem" ] && cp "$dir/org-cert.pem" "$out/"
chmod 0644 "$out"/*

orgkey serve --insecure-plaintext &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
for _ in $(seq 300); do
  curl -fsS -o /dev/null "$url/v1/health" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit $?; }
  sleep 0.1
done
orgkey ignite --url "$url" --token-file "$dir/secrets/admin.token" \
  --passphrase-file "$dir/secrets/ignition-passphrase"
curl -fsS -o /dev/null "$url/v1/ready"
echo "orgkey dev appliance ready on port $port (plaintext HTTP; tokens and org key in $out)"
# The server's exit status is the container's; a TERM is passed on to it.
set +e
wait "$server"
status=$?
# `wait` returns early when the trap runs; wait for the server itself.
while kill -0 "$server" 2>/dev/null; do
  wait "$server"
  status=$?
done
exit "$status"
