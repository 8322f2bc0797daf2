#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# SoftHSM2 tokens, a real SQLite store, a real HTTP server, gpg and openssl;
# then the container tests (the orgkey:dev image through testcontainers);
# then schemathesis against a live appliance (the API contract); then the
# integration tests once more against Kryoptic tokens, and once more with
# the store on a throwaway PostgreSQL cluster.
# Installs the Debian packages it needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

cargo test --locked --all-targets "$@"

# The container tests: crates/orgkey-testcontainers against the orgkey:dev
# image, built locally by scripts/images.sh (reused while unchanged). Without
# a Docker engine they are skipped with a loud message; ORGKEY_TEST_CONTAINERS=1
# makes them mandatory (CI), ORGKEY_TEST_CONTAINERS=0 skips them.
bash scripts/container-tests.sh

# The API contract against a live appliance: schemathesis (PyPI, installed
# into target/venv on the first run and kept) fuzzes it from
# docs/openapi.json, well under a minute. ORGKEY_TEST_SCHEMATHESIS=0 skips it.
if [ "${ORGKEY_TEST_SCHEMATHESIS:-1}" != 0 ]; then
  echo "== API contract: schemathesis against a live appliance ==" >&2
  bash scripts/schemathesis.sh
fi

# The integration suite again against a second PKCS#11 implementation,
# Kryoptic (built from crates.io into target/kryoptic/ on the first run, a few
# minutes). ORGKEY_TEST_KRYOPTIC=0 skips it.
if [ "${ORGKEY_TEST_KRYOPTIC:-1}" != 0 ]; then
  echo "== integration suite against Kryoptic ==" >&2
  bash scripts/test-kryoptic.sh "$@"
fi

# The integration suite again with every appliance's store on PostgreSQL (a
# throwaway cluster from Debian's postgresql package, made and removed by
# scripts/postgres.sh). ORGKEY_TEST_POSTGRES=0 skips it.
if [ "${ORGKEY_TEST_POSTGRES:-1}" != 0 ]; then
  echo "== integration suite against PostgreSQL ==" >&2
  bash scripts/test-postgres.sh "$@"
fi
