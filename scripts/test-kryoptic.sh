#!/usr/bin/env bash
# Runs the integration suite against Kryoptic instead of SoftHSM2: the same
# fixture, with every appliance's token made by `orgkey init --create-token
# --profile kryoptic`. Tests that drive SoftHSM2 itself say so and skip.
# Extra arguments go to cargo test (a test name, for instance).
set -euo pipefail
cd "$(dirname "$0")/.."
module=$(bash scripts/kryoptic.sh | tail -1)
ORGKEY_TEST_PROFILE=kryoptic ORGKEY_TEST_MODULE="$module" \
  cargo test --locked --test '*' "$@"
