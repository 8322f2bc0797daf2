#!/usr/bin/env bash
# The API contract check: schemathesis (PyPI) fuzzes a live, ignited
# appliance from docs/openapi.json and fails on any 5xx or any response the
# document does not describe (tests/openapi.rs, schemathesis_finds_no_5xx_*).
#
# schemathesis is installed, pinned, into a project-local virtualenv
# (target/venv, kept between runs; only a version change reinstalls it).
# Needs Python 3.9+ with venv and PyPI. ORGKEY_TEST_SCHEMATHESIS=0 skips it
# (scripts/test.sh). Extra arguments go to the test binary.
# ORGKEY_SCHEMATHESIS_EXAMPLES (default 30) bounds the examples per
# operation; ORGKEY_SCHEMATHESIS_SEED replays a run.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
venv=target/venv
st="$venv/bin/schemathesis"

if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  python=$(command -v python3.11 || command -v python3)
  rm -rf "$venv"
  "$python" -m venv "$venv" || {
    echo "could not make a virtualenv with $python (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
  "$st" --version >&2
fi

ORGKEY_SCHEMATHESIS="$PWD/$st" \
  cargo test --locked --test openapi schemathesis -- --nocapture "$@"
