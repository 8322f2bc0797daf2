#!/usr/bin/env bash
# Benchmark: state backup and restore of a large store (default 2.2 GB,
# SIZE_MB=...). The store is padded with random data in an extra table, then
# `orgkey backup state` (snapshot + encryption to the org key) and
# `orgkey backup restore-state` (decryption through the token) run under
# /usr/bin/time: MB/s and peak memory for each. Memory must stay flat (tens of
# MiB) whatever the size, because both directions stream. Release build,
# throwaway appliance; needs about 3x SIZE_MB of free disk in $TMPDIR.
#
#   scripts/bench-backup.sh
#   SIZE_MB=500 scripts/bench-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

size_mb="${SIZE_MB:-2200}"
cargo build --locked --release --bin orgkey >/dev/null
bin="$PWD/target/release/orgkey"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
echo "bench-ignition-passphrase" > "$work/pin"
echo "bench-security-officer" > "$work/so"
export ORGKEY_CONFIG="$work/data/orgkey.toml" ORGKEY_LOG=warn
"$bin" init --data-dir "$work/data" --create-token \
  --ignition-passphrase-file "$work/pin" --so-pin-file "$work/so" >/dev/null
"$bin" org-key generate --uid "Bench <bench@example.com>" --passphrase-file "$work/pin" >/dev/null

echo "padding the store to ${size_mb} MB ..." >&2
sqlite3 "$work/data/orgkey.db" <<SQL
CREATE TABLE bench_padding (b BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${size_mb})
INSERT INTO bench_padding SELECT randomblob(1048576) FROM n;
SQL
bytes=$(stat -c %s "$work/data/orgkey.db")

/usr/bin/time -f "%e %M" -o "$work/backup.time" \
  "$bin" backup state --out "$work/state.pgp" --passphrase-file "$work/pin" >/dev/null
read -r bsecs brss < "$work/backup.time"
/usr/bin/time -f "%e %M" -o "$work/restore.time" \
  "$bin" backup restore-state --in "$work/state.pgp" --replace --passphrase-file "$work/pin" >/dev/null
read -r rsecs rrss < "$work/restore.time"

mb=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }')
echo "store size            ${mb} MiB"
awk -v m="$mb" -v s="$bsecs" -v r="$brss" 'BEGIN { printf "backup state          %.1f s = %.0f MiB/s, peak RSS %d MiB (snapshot + OpenPGP encryption)\n", s, m / s, r / 1024 }'
awk -v m="$mb" -v s="$rsecs" -v r="$rrss" 'BEGIN { printf "restore-state         %.1f s = %.0f MiB/s, peak RSS %d MiB (decryption through the token + audit chain check)\n", s, m / s, r / 1024 }'
echo "machine               $(nproc) cores"
