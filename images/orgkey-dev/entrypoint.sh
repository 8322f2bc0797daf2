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
dir=${ORGKEY_DEV_DATA:-/var/lib/orgkey-dev}
out=/run/orgkey
port=8443
url="http://127.0.0.1:$port"
export ORGKEY_CONFIG="$dir/orgkey.toml"

say "no config at $config: starting as a TEST FIXTURE (throwaway SoftHSM2 token, random passphrases kept in the container; not for production)"

umask 077
# A container restarted after its first start keeps its appliance; one whose
# first setup failed half-way is not served.
if [ -f "$ORGKEY_CONFIG" ] && [ ! -f "$dir/fixture-complete" ]; then
  say "an earlier setup of this container failed (see its first log); start a new container"
  exit 1
fi
if [ ! -f "$ORGKEY_CONFIG" ]; then
  mkdir -p "$dir/secrets" "$out"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/secrets/ignition-passphrase"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$dir/secrets/so-pin"
  domain_args=()
  for d in "${domains[@]}"; do domain_args+=(--domain "$d"); done
  say "creating a SoftHSM2 token and the store for ${domains[*]}"
  orgkey init --data-dir "$dir" "${domain_args[@]}" --create-token --listen "0.0.0.0:$port" \
    --ignition-passphrase-file "$dir/secrets/ignition-passphrase" --so-pin-file "$dir/secrets/so-pin"
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
