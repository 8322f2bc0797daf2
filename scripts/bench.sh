#!/usr/bin/env bash
# Benchmark: in one run, the raw token signing rate (C_Sign on one session,
# same key, in-process), HTTP signatures/s through /v1/sign (keep-alive,
# 1 KiB bodies, 16 concurrent clients) and S/MIME certificates issued/s
# through /v1/x509/issue?renew=true (one P-256 CSR, every request a new
# certificate), each with its ratio to the raw rate. Release build, a
# throwaway appliance in a temp dir, loopback only.
#
#   scripts/bench.sh            # p256
#   ALG=ed25519 BENCH_SECONDS=10 scripts/bench.sh
#   PROFILE=kryoptic scripts/bench.sh   # against Kryoptic (built by scripts/kryoptic.sh)
#   ORGKEY_BIN=/path/to/old/orgkey scripts/bench.sh   # another build of the appliance
#                                        # (same load generator), for before/after pairs;
#                                        # with LOADGEN_BIN too, nothing is built
#
# After the closed-loop run at the maximum rate, /v1/sign is run again paced
# at half the rate just measured (HALF_RATE=0 leaves that out), for its
# latency percentiles. The load average before and after is printed too:
# the machine is shared, so compare ratios from the same run, not rates.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

alg="${ALG:-p256}"
token_args=(--profile "${PROFILE:-softhsm2}")
if [ "${PROFILE:-softhsm2}" = kryoptic ]; then
  token_args+=(--module "$(bash scripts/kryoptic.sh | tail -1)")
fi
secs="${BENCH_SECONDS:-5}"
clients="${CLIENTS:-16}"
# ORGKEY_BIN and LOADGEN_BIN (both set: nothing is built) run given builds.
if [ -z "${ORGKEY_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
  cargo build --locked --release --bin orgkey --example loadgen >/dev/null
fi
bin="${ORGKEY_BIN:-$PWD/target/release/orgkey}"
loadgen="${LOADGEN_BIN:-$PWD/target/release/examples/loadgen}"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
umask 077
echo "bench-ignition-passphrase" > "$work/pin"
echo "bench-security-officer" > "$work/so"
export ORGKEY_CONFIG="$work/data/orgkey.toml" ORGKEY_LOG=warn
"$bin" init --data-dir "$work/data" --domain example.com --create-token "${token_args[@]}" \
  --ignition-passphrase-file "$work/pin" --so-pin-file "$work/so" >/dev/null
"$bin" org-key generate --algorithm "$alg" --uid "Bench <bench@example.com>" --passphrase-file "$work/pin" >/dev/null
"$bin" client add bench --scopes sign,issue --token-out "$work/token" 2>/dev/null
"$bin" org-cert self-sign --subject "CN=Bench Org CA" --passphrase-file "$work/pin" >/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/user.key" \
  -out "$work/user.csr" -subj "/emailAddress=user@example.com" 2>/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
raw=$(/usr/bin/time -f "cpu %U %S" -o "$work/raw.time" "$bin" token bench-sign --seconds "$secs" \
  --passphrase-file "$work/pin" | awk '/^raw_sign_per_sec/ {print $2}')
# CPU seconds the raw loop used per signature (user + system).
raw_cpu=$(awk -v r="$raw" -v s="$secs" '/^cpu/ { printf "%.1f", ($2 + $3) * 1e6 / (r * s) }' "$work/raw.time")

"$bin" serve --listen 127.0.0.1:0 --ignition-passphrase-file "$work/pin" > "$work/serve.out" 2> "$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^orgkey listening on //p' "$work/serve.out")
[ -n "$url" ] || { cat "$work/serve.err"; exit 1; }

out=$("$loadgen" "$url/v1/sign" "$(cat "$work/token")" "$clients" "$secs" 1024)
api=$(echo "$out" | awk '/^requests_per_sec/ {print $2}')
# The server's CPU time (user + system clock ticks) from /proc.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
half=""
half_cpu=""
if [ "${HALF_RATE:-1}" != 0 ]; then
  t0=$(server_ticks)
  half=$("$loadgen" "$url/v1/sign" "$(cat "$work/token")" "$clients" "$secs" 1024 "$(awk -v a="$api" 'BEGIN { printf "%d", a / 2 }')")
  t1=$(server_ticks)
  n=$(echo "$half" | awk '/^requests_ok/ {print $2}')
  half_cpu=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
fi
iout=$("$loadgen" "$url/v1/x509/issue?renew=true" "$(cat "$work/token")" "$clients" "$secs" "@$work/user.csr")
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
issued=$(echo "$iout" | awk '/^requests_per_sec/ {print $2}')
echo "token                ${PROFILE:-softhsm2}"
echo "algorithm            $alg"
echo "raw token sign/s     $raw   (one session, in-process)"
echo "API /v1/sign/s       $api   ($clients clients, 1 KiB bodies, keep-alive, audit row per signature)"
echo "$out" | grep -E '^(errors|first_error|latency_ms)' | sed 's/^/  sign /'
awk -v a="$api" -v r="$raw" 'BEGIN { printf "ratio sign/raw       %.2f\n", a / r }'
if [ -n "$half" ]; then
  echo "sign at half rate    $(echo "$half" | awk '/^requests_per_sec/ {print $2}')/s paced: $(echo "$half" | grep '^latency_ms' | sed 's/^latency_ms //') ms, errors $(echo "$half" | awk '/^errors/ {print $2}')"
  # CPU per signature does not depend on what else runs on the machine:
  # the server's (everything a request costs, the token's signing included)
  # against the raw loop's, and the ratio that would leave the appliance
  # if it had the cores to itself.
  echo "cpu per signature    server ${half_cpu} us, raw token ${raw_cpu} us"
  awk -v h="$half_cpu" -v r="$raw_cpu" -v c="$(nproc)" 'BEGIN { if (h > 0) printf "cpu ratio raw/server %.2f   (%d cores to itself: at most %.2f x raw)\n", r / h, c, c * r / h }'
fi
echo "API issued certs/s   $issued   ($clients clients, P-256 CSR, crash-safe issuance)"
echo "$iout" | grep -E '^(errors|first_error|latency_ms)' | sed 's/^/  issue /'
awk -v a="$issued" -v r="$raw" 'BEGIN { printf "ratio issue/raw      %.2f\n", a / r }'
echo "machine              $(nproc) cores; load generator shares them with the appliance"
echo "load average         before $load_before, after $load_after"
