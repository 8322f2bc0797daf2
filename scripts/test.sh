#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# SoftHSM2 tokens, a real SQLite store, a real HTTP server, gpg and openssl;
# then the integration tests once more against Kryoptic tokens.
# Installs the Debian packages it needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

cargo test --locked --all-targets "$@"

# The integration suite again against a second PKCS#11 implementation,
# Kryoptic (built from crates.io into target/kryoptic/ on the first run, a few
# minutes). ORGKEY_TEST_KRYOPTIC=0 skips it.
if [ "${ORGKEY_TEST_KRYOPTIC:-1}" != 0 ]; then
  echo "== integration suite against Kryoptic ==" >&2
  bash scripts/test-kryoptic.sh "$@"
fi
