# Shared by scripts/*.sh: install the Debian packages orgkey needs when missing.
# shellcheck shell=bash

ORGKEY_DEBIAN_PACKAGES=(
  softhsm2      # the PKCS#11 token used by dev setups and the test suite
  opensc        # pkcs11-tool: an independent PKCS#11 client in tests
  p11-kit       # p11-kit server: an out-of-process "network HSM" in tests
  p11-kit-modules
  gnupg         # gpg verifies every OpenPGP artifact in tests
  openssl       # TLS test certificates
  sqlite3       # tests inspect and tamper with the store
  libclang-dev  # ossl (sequoia's OpenSSL crypto backend) runs bindgen
  libssl-dev    # sequoia's crypto backend (decision 0024)
  pkg-config
  ca-certificates
  curl          # dev.sh waits for the server with it; docs examples (tests/docs_examples.rs)
  jq            # docs/api.md's ignition example (run by tests/docs_examples.rs)
  make          # scripts/kryoptic.sh builds OpenSSL for Kryoptic
  perl          # OpenSSL's Configure
  python3-venv  # scripts/schemathesis.sh: schemathesis (PyPI) in a virtualenv under target/
)

orgkey_install_deps() {
  local missing=()
  for p in "${ORGKEY_DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || { echo "need root or sudo to install ${missing[*]}" >&2; exit 1; }
      sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "cargo not found: install a current Rust toolchain with rustup (https://rustup.rs), then rerun" >&2
      exit 1
    fi
  fi
}
