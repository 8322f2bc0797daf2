#!/usr/bin/env bash
# Load test (loopback only, bounded): CLIENTS clients x REQUESTS requests,
# rotating through /v1/sign, /v1/certify and /v1/x509/issue against one
# appliance. At the end the 2xx responses must equal the audit rows and the
# store records (user keys, issued certificates) with 0 errors; prints p50/p99.
#
#   scripts/load.sh                      # 32 clients x 60 requests
#   CLIENTS=8 REQUESTS=300 scripts/load.sh
#   SOAK_SECONDS=600 scripts/load.sh     # soak: repeat rounds for 10 minutes and
#                                        # report RSS, open fds, token sessions and
#                                        # the OpenPGP verification cache at start
#                                        # and end (they must stay flat); the
#                                        # certify requests resubmit a fixed pool
#                                        # of user keys (CLIENTS x REQUESTS/3) and
#                                        # prints the growth per request in the
#                                        # second half
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

clients="${CLIENTS:-32}"
requests="${REQUESTS:-60}"
soak="${SOAK_SECONDS:-0}"
cargo build --locked --release --bin orgkey --example mixedload >/dev/null
bin="$PWD/target/release/orgkey"
load="$PWD/target/release/examples/mixedload"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
umask 077
echo "load-ignition-passphrase" > "$work/pin"
echo "load-security-officer" > "$work/so"
export ORGKEY_CONFIG="$work/data/orgkey.toml" ORGKEY_LOG=warn
"$bin" init --data-dir "$work/data" --domain example.com --create-token \
  --ignition-passphrase-file "$work/pin" --so-pin-file "$work/so" >/dev/null
"$bin" org-key generate --uid "Load <load@example.com>" --passphrase-file "$work/pin" >/dev/null
"$bin" org-cert self-sign --subject "CN=Load Org CA" --passphrase-file "$work/pin" >/dev/null
"$bin" client add load --scopes sign,certify,issue --token-out "$work/token" 2>/dev/null
# /v1/status shows token sessions and caches to admin clients only.
"$bin" client add ops --scopes admin --token-out "$work/admin.token" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/u.key" \
  -out "$work/u.csr" -subj "/emailAddress=load@example.com" 2>/dev/null

"$bin" serve --listen 127.0.0.1:0 --ignition-passphrase-file "$work/pin" > "$work/serve.out" 2> "$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^orgkey listening on //p' "$work/serve.out")
[ -n "$url" ] || { cat "$work/serve.err"; exit 1; }

sample() {
  local rss fds threads status sessions cache
  # Anonymous memory is the heap; file-backed is the binary, libraries and the
  # SQLite WAL index (-shm), which is mapped and grows with the WAL.
  rss=$(awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} /^RssShmem/ {s=$2} END {print a+f+s " (anon " a ", file " f+s ")"}' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  threads=$(awk '/^Threads/ {print $2}' "/proc/$server/status")
  status=$(curl -s -H "Authorization: Bearer $(cat "$work/admin.token")" "$url/v1/status")
  sessions=$(echo "$status" | sed -n 's/.*"token_sessions":\([0-9]*\).*/\1/p')
  cache=$(echo "$status" | sed -n 's/.*"openpgp_verification_cache":\([0-9]*\).*/\1/p')
  echo "rss_kib=$rss fds=$fds threads=$threads token_sessions=$sessions openpgp_verification_cache=$cache"
}

pool=""
if [ "$soak" -gt 0 ]; then pool="$work/users"; mkdir -p "$pool"; fi
total_sign=0 total_certify=0 total_issue=0 total_errors=0 rounds=0
start=$(date +%s)
echo "start: $(sample)"
while :; do
  out=$("$load" "$url" "$(cat "$work/token")" "$clients" "$requests" "$work/u.csr" $pool)
  rounds=$((rounds + 1))
  total_sign=$((total_sign + $(echo "$out" | awk '/^sign_ok/ {print $2}')))
  total_certify=$((total_certify + $(echo "$out" | awk '/^certify_ok/ {print $2}')))
  total_issue=$((total_issue + $(echo "$out" | awk '/^issue_ok/ {print $2}')))
  total_errors=$((total_errors + $(echo "$out" | awk '/^errors/ {print $2}')))
  latency=$(echo "$out" | grep '^latency_ms')
  [ "$soak" -gt 0 ] && [ $(( $(date +%s) - start )) -lt "$soak" ] || break
  [ "$soak" -gt 0 ] && echo "round $rounds: $(sample) $latency"
  # Warm-up is over by half time: from there on RSS should not follow the load.
  if [ "$soak" -gt 0 ] && [ -z "${half_anon:-}" ] && [ $(( $(date +%s) - start )) -ge $((soak / 2)) ]; then
    half_anon=$(awk '/^RssAnon/ {print $2}' "/proc/$server/status")
    half_requests=$((total_sign + total_certify + total_issue + total_errors))
  fi
done
echo "end:   $(sample)"
if [ -n "${half_anon:-}" ]; then
  end_anon=$(awk '/^RssAnon/ {print $2}' "/proc/$server/status")
  n=$((total_sign + total_certify + total_issue + total_errors - half_requests))
  awk -v a="$half_anon" -v b="$end_anon" -v n="$n" 'BEGIN {
    printf "second half: anonymous RSS %+d KiB over %d requests (%.1f bytes/request)\n", b - a, n, n ? (b - a) * 1024 / n : 0 }'
fi
kill "$server"; wait "$server" 2>/dev/null || true; server=""

db="$work/data/orgkey.db"
audit_sign=$(sqlite3 "$db" "SELECT COUNT(*) FROM audit_log WHERE operation='sign' AND outcome='ok'")
audit_certify=$(sqlite3 "$db" "SELECT COUNT(*) FROM audit_log WHERE operation='certify' AND outcome='ok'")
audit_issue=$(sqlite3 "$db" "SELECT COUNT(*) FROM audit_log WHERE operation='x509-issue' AND outcome='ok'")
keys=$(sqlite3 "$db" "SELECT COUNT(*) FROM user_keys")
certs=$(sqlite3 "$db" "SELECT COUNT(*) FROM user_certs WHERE state='issued'")
chain=$("$bin" audit verify)

echo "rounds $rounds x $clients clients x $requests requests, $latency"
echo "sign     2xx $total_sign = audit rows $audit_sign"
# Without a pool every certification is of a new key; with one, of the pool's keys.
expect_keys=$total_certify
[ -n "$pool" ] && expect_keys=$(find "$pool" -name '*.asc' | wc -l)
echo "certify  2xx $total_certify = audit rows $audit_certify; user keys $keys = $expect_keys"
echo "issue    2xx $total_issue = audit rows $audit_issue = issued certificates $certs"
echo "errors   $total_errors; $chain"
[ "$total_errors" -eq 0 ] && [ "$total_sign" -eq "$audit_sign" ] \
  && [ "$total_certify" -eq "$audit_certify" ] && [ "$keys" -eq "$expect_keys" ] \
  && [ "$total_issue" -eq "$audit_issue" ] && [ "$total_issue" -eq "$certs" ] \
  || { echo "MISMATCH"; exit 1; }
echo "load test passed"
