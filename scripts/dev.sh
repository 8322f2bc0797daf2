#!/usr/bin/env bash
# Sets up (once) and runs an orgkey appliance on its embedded defaults in
# ./dev-data: a SoftHSM2 token and a SQLite store in that directory, a P-256
# org key, an admin and a gateway client. Starts the server sealed, ignites it
# through the API like an operator would, and prints a curl example.
# Development only: the dev passphrases are kept in files in ./dev-data.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

cargo build --locked --release
bin="$PWD/target/release/orgkey"
dir="$PWD/dev-data"
export ORGKEY_CONFIG="$dir/orgkey.toml"

if [ ! -f "$ORGKEY_CONFIG" ]; then
  mkdir -p -m 700 "$dir/secrets"
  umask 077
  head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/secrets/ignition-passphrase"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/secrets/so-pin"
  "$bin" init --data-dir "$dir" --domain example.com --create-token \
    --ignition-passphrase-file "$dir/secrets/ignition-passphrase" --so-pin-file "$dir/secrets/so-pin"
  "$bin" org-key generate --uid "Example Org Key <orgkey@example.com>" \
    --passphrase-file "$dir/secrets/ignition-passphrase"
  "$bin" client add admin --scopes admin --token-out "$dir/secrets/admin.token"
  "$bin" client add gateway --scopes sign,certify --token-out "$dir/secrets/gateway.token"
fi

url="http://127.0.0.1:8443"
"$bin" serve &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
for _ in $(seq 50); do
  curl -fsS "$url/v1/health" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "the appliance is SEALED; igniting it as an operator would:"
"$bin" ignite --token-file "$dir/secrets/admin.token" --passphrase-file "$dir/secrets/ignition-passphrase"
cat <<EOT

orgkey is running at $url (Ctrl-C stops it). Try:

  echo 'hello' > /tmp/hello.txt
  curl -sS -H "Authorization: Bearer \$(cat $dir/secrets/gateway.token)" \\
       --data-binary @/tmp/hello.txt $url/v1/sign > /tmp/hello.txt.asc
  curl -sS $url/v1/org-key | gpg --import
  gpg --verify /tmp/hello.txt.asc /tmp/hello.txt

EOT
wait $server
