#!/usr/bin/env bash
# Profiles the appliance under load: a throwaway appliance like
# scripts/bench.sh's, `perf record -g` on the server while the load
# generator drives ROUTE for SECONDS, then a report by library and symbol
# and folded stacks. Everything lands in target/profile/ (never commit it).
#
#   scripts/profile.sh                   # /v1/sign, p256, 10 s
#   ROUTE=issue ALG=ed25519 scripts/profile.sh
#   PROFILE=kryoptic scripts/profile.sh  # against Kryoptic
#   CALLGRAPH=dwarf scripts/profile.sh   # stacks through libcrypto and libc too
#   RATE=500 scripts/profile.sh          # paced load instead of the maximum rate
#
# Outputs:
#   target/profile/perf.data     perf report -i target/profile/perf.data
#   target/profile/report.txt    samples by library and symbol (self time)
#   target/profile/dso.txt       samples by library
#   target/profile/perf.folded   folded stacks (one line per stack: frames;... count)
#   target/profile/flamegraph.svg  when inferno-flamegraph or flamegraph.pl is on PATH
#                                (`cargo install inferno` provides the former)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps
if ! command -v perf >/dev/null; then
  echo "installing linux-perf" >&2
  apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi

alg="${ALG:-p256}"
route="${ROUTE:-sign}"
secs="${SECONDS_TO_PROFILE:-10}"
clients="${CLIENTS:-16}"
token_args=(--profile "${PROFILE:-softhsm2}")
if [ "${PROFILE:-softhsm2}" = kryoptic ]; then
  token_args+=(--module "$(bash scripts/kryoptic.sh | tail -1)")
fi
cargo build --locked --release --bin orgkey --example loadgen >/dev/null
bin="${ORGKEY_BIN:-$PWD/target/release/orgkey}"
loadgen="$PWD/target/release/examples/loadgen"
out="$PWD/target/profile"
mkdir -p "$out"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
umask 077
echo "profile-ignition-passphrase" > "$work/pin"
echo "profile-security-officer" > "$work/so"
export ORGKEY_CONFIG="$work/data/orgkey.toml" ORGKEY_LOG=warn
"$bin" init --data-dir "$work/data" --domain example.com --create-token "${token_args[@]}" \
  --ignition-passphrase-file "$work/pin" --so-pin-file "$work/so" >/dev/null
"$bin" org-key generate --algorithm "$alg" --uid "Profile <profile@example.com>" --passphrase-file "$work/pin" >/dev/null
"$bin" client add profile --scopes sign,issue --token-out "$work/token" 2>/dev/null
"$bin" org-cert self-sign --subject "CN=Profile Org CA" --passphrase-file "$work/pin" >/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/user.key" \
  -out "$work/user.csr" -subj "/emailAddress=user@example.com" 2>/dev/null

"$bin" serve --listen 127.0.0.1:0 --ignition-passphrase-file "$work/pin" > "$work/serve.out" 2> "$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^orgkey listening on //p' "$work/serve.out")
[ -n "$url" ] || { cat "$work/serve.err"; exit 1; }

case "$route" in
  sign) target="$url/v1/sign"; body=1024 ;;
  issue) target="$url/v1/x509/issue?renew=true"; body="@$work/user.csr" ;;
  *) echo "ROUTE is sign or issue" >&2; exit 2 ;;
esac

# Frame pointers by default; CALLGRAPH=dwarf also walks through libraries
# built without them (libcrypto, libc), at a lower rate and a larger file.
if [ "${CALLGRAPH:-fp}" = dwarf ]; then
  callgraph=(--call-graph dwarf,16384 -F 199)
else
  callgraph=(-g -F 999)
fi
perf record -q "${callgraph[@]}" -p "$server" -o "$out/perf.data" -- sleep "$((secs + 1))" 2>/dev/null &
rec=$!
sleep 0.5
# RATE=N: paced at N requests/s instead of as fast as the server answers.
"$loadgen" "$target" "$(cat "$work/token")" "$clients" "$secs" "$body" ${RATE:+"$RATE"} | tee "$out/load.txt"
wait "$rec"

perf report -i "$out/perf.data" --no-children -g none --percent-limit 0.3 --sort dso,sym --stdio 2>/dev/null \
  | grep -v '^$' > "$out/report.txt"
perf report -i "$out/perf.data" --no-children -g none --sort dso --stdio 2>/dev/null \
  | grep -v '^#' | grep -v '^$' > "$out/dso.txt"
# Folded stacks: perf script prints each sample as a header line, then one
# frame per line (innermost first), then a blank line.
perf script -i "$out/perf.data" 2>/dev/null | awk '
  /^[^ \t]/ { comm = $1; n = 0; next }
  /^[ \t]+[0-9a-f]+ / { sub(/^[ \t]+[0-9a-f]+ /, ""); sub(/\+0x[0-9a-f]+/, ""); sub(/ \(.*\)$/, ""); f[n++] = $0; next }
  /^$/ { if (n) { s = comm; for (i = n - 1; i >= 0; i--) s = s ";" f[i]; c[s]++ } n = 0 }
  END { for (s in c) print s, c[s] }' > "$out/perf.folded"
if command -v inferno-flamegraph >/dev/null; then
  inferno-flamegraph < "$out/perf.folded" > "$out/flamegraph.svg"
elif command -v flamegraph.pl >/dev/null; then
  flamegraph.pl < "$out/perf.folded" > "$out/flamegraph.svg"
fi
echo "--- samples by library (target/profile/dso.txt)"
head -15 "$out/dso.txt"
echo "--- top symbols (target/profile/report.txt)"
grep -v '^#' "$out/report.txt" | head -25
echo "profile in $out"
