#!/usr/bin/env bash
# The container tests: builds the images (scripts/images.sh, reused while
# their inputs are unchanged), then runs the tests of
# crates/orgkey-testcontainers (the orgkey:dev image through testcontainers,
# checked with gpg and openssl on this host; a network HSM; and the cluster
# faults of tests/cluster_faults.rs: orgkey-postgres:15 and three nodes,
# about 70 s).
#
# ORGKEY_TEST_CONTAINERS: unset runs them when a Docker engine answers and
# skips them with a loud message when none does; 1 makes them mandatory (CI:
# no engine is a failure); 0 skips them.
#
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${ORGKEY_TEST_CONTAINERS:-}
if [ "$mode" = 0 ]; then
  echo "== container tests: skipped (ORGKEY_TEST_CONTAINERS=0) ==" >&2
  exit 0
fi
if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  if [ "$mode" = 1 ]; then
    echo "container tests: ORGKEY_TEST_CONTAINERS=1 makes them mandatory, but no Docker engine answers (docker info)" >&2
    exit 1
  fi
  cat >&2 <<'EOF'

##########################################################################
##  SKIPPED: the container tests (crates/orgkey-testcontainers).         ##
##  No Docker engine answers here. Start one and rerun, or set           ##
##  ORGKEY_TEST_CONTAINERS=1 to make this a failure.                     ##
##########################################################################

EOF
  exit 0
fi

echo "== container images ==" >&2
bash scripts/images.sh

echo "== container tests (crates/orgkey-testcontainers) ==" >&2
export ORGKEY_TEST_CONTAINERS=1
cargo test --locked -p orgkey-testcontainers "$@"
