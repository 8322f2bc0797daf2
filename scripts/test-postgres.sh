#!/usr/bin/env bash
# Runs the integration suite against PostgreSQL instead of the SQLite file:
# a throwaway cluster (scripts/postgres.sh: Debian's postgresql, initdb into
# a temp dir, a free loopback port, removed at the end), and every appliance
# of the suite made by `orgkey init --store-url` on a database of its own on
# it. Tests about the SQLite file itself say so and skip.
# Extra arguments go to cargo test (a test name, for instance).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/postgres.sh run cargo test --locked --test '*' "$@"
