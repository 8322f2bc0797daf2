#!/usr/bin/env bash
# Benchmark: one maintenance run over a large directory, against the raw
# token signing rate measured in the same run. Seeds USERS synthetic users
# (not yet certified, so every one is due), runs `orgkey maintenance run`
# under /usr/bin/time, and prints certifications/s, the ratio to the raw
# C_Sign rate, and peak memory. A second, ten times smaller directory shows
# whether memory grows with the user count (it should not: the run streams
# through the store in batches). Release build, throwaway appliance, no network.
#
#   scripts/bench-maintenance.sh                # 100000 users, p256
#   USERS=20000 ALG=ed25519 scripts/bench-maintenance.sh
#   ORGKEY_BIN=/path/to/other/orgkey SEED_BIN=target/release/examples/seed_users scripts/bench-maintenance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

alg="${ALG:-p256}"
users="${USERS:-100000}"
small=$((users / 10))
# ORGKEY_BIN and SEED_BIN (both set: nothing is built) run given builds,
# for before/after pairs.
if [ -z "${ORGKEY_BIN:-}" ] || [ -z "${SEED_BIN:-}" ]; then
  cargo build --locked --release --bin orgkey --example seed_users >/dev/null
fi
bin="${ORGKEY_BIN:-$PWD/target/release/orgkey}"
seed="${SEED_BIN:-$PWD/target/release/examples/seed_users}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
echo "bench-ignition-passphrase" > "$work/pin"
echo "bench-security-officer" > "$work/so"

# appliance NAME: a fresh appliance with an org key in $work/NAME
appliance() {
  local dir="$work/$1"
  ORGKEY_LOG=warn "$bin" init --data-dir "$dir" --domain example.com --create-token \
    --ignition-passphrase-file "$work/pin" --so-pin-file "$work/so" >/dev/null
  ORGKEY_CONFIG="$dir/orgkey.toml" ORGKEY_LOG=warn "$bin" org-key generate --algorithm "$alg" \
    --uid "Bench <bench@example.com>" --passphrase-file "$work/pin" >/dev/null
}

# run NAME COUNT: seeds COUNT users, runs maintenance, prints "SECONDS RSS_KIB RENEWED"
run() {
  local dir="$work/$1"
  "$seed" "$dir/orgkey.db" "$2" 2>/dev/null
  ORGKEY_CONFIG="$dir/orgkey.toml" ORGKEY_LOG=warn /usr/bin/time -f "%e %M" -o "$work/$1.time" \
    "$bin" maintenance run --quiet --passphrase-file "$work/pin" > "$work/$1.out"
  local renewed
  renewed=$(sed -n 's/.* due, \([0-9]*\) renewed.*/\1/p' "$work/$1.out")
  echo "$(cat "$work/$1.time") $renewed"
}

appliance big
raw=$(ORGKEY_CONFIG="$work/big/orgkey.toml" ORGKEY_LOG=warn "$bin" token bench-sign --seconds 5 \
  --passphrase-file "$work/pin" | awk '/^raw_sign_per_sec/ {print $2}')
read -r secs rss renewed < <(run big "$users")
appliance small
read -r ssecs srss srenewed < <(run small "$small")

echo "algorithm                 $alg"
echo "raw token sign/s          $raw   (one session, in-process)"
awk -v n="$renewed" -v s="$secs" -v r="$raw" 'BEGIN {
  printf "maintenance               %d users certified in %.1f s = %.0f certifications/s\n", n, s, n / s
  printf "ratio maintenance/raw     %.2f\n", (n / s) / r }'
echo "peak RSS                  $((rss / 1024)) MiB at $users users, $((srss / 1024)) MiB at $small users ($srenewed certified in ${ssecs}s)"
echo "machine                   $(nproc) cores"
