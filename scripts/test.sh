#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# SoftHSM2 tokens, a real SQLite store, a real HTTP server, gpg and openssl.
# Installs the Debian packages it needs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

cargo test --locked --all-targets "$@"
