#!/usr/bin/env bash
# Builds Kryoptic 1.5.4's PKCS#11 module, a second software token the test
# suite runs against (scripts/test-kryoptic.sh), and prints its path.
#
# Debian 12's OpenSSL (3.0) is too old for Kryoptic (3.2 or later), so
# OpenSSL 3.6 is built from the sources in the openssl-src crate (crates.io)
# and linked statically. That crate leaves out util/providers.num, which only
# the loadable provider modules need, so OpenSSL is configured here with
# no-module/no-shared before Kryoptic's own build script sees it; the other
# options are the ones that build script uses. Everything lands in
# target/kryoptic/; a second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh
orgkey_install_deps

root="$PWD/target/kryoptic"
module="$root/libkryoptic_pkcs11.so"
manifest="$PWD/scripts/kryoptic/Cargo.toml"
if [ -f "$module" ] && [ "$module" -nt "$manifest" ]; then
  echo "$module"
  exit 0
fi
mkdir -p "$root"

cargo fetch --locked --manifest-path "$manifest" >&2
src=$(cargo metadata --locked --format-version 1 --manifest-path "$manifest" \
  | grep -o '"manifest_path":"[^"]*/openssl-src-[^"]*/Cargo.toml"' | head -1 \
  | sed 's/^"manifest_path":"//; s#/Cargo.toml"$##')
[ -d "$src/openssl" ] || { echo "openssl-src sources not found (got '$src')" >&2; exit 1; }

ossl="$root/openssl"
if [ ! -f "$ossl/libcrypto.a" ]; then
  rm -rf "$ossl"
  cp -r "$src/openssl" "$ossl"
  echo "building OpenSSL $(sed -n 's/^MAJOR=//p' "$ossl/VERSION.dat").$(sed -n 's/^MINOR=//p' "$ossl/VERSION.dat") for Kryoptic (a few minutes)" >&2
  (
    cd "$ossl"
    ./Configure no-deprecated no-aria no-argon2 no-atexit no-des no-dsa no-cast no-mdc2 \
      no-ec2m no-rc2 no-rc4 no-rc5 no-rmd160 no-seed no-sm2 no-sm3 no-sm4 no-docs no-tests \
      enable-ec_nistp_64_gcc_128 no-module no-shared no-legacy no-apps >"$root/openssl-configure.log" 2>&1
    make -j"$(nproc)" build_libs >"$root/openssl-make.log" 2>&1
  ) || { echo "building OpenSSL failed; see $root/openssl-*.log" >&2; exit 1; }
fi

echo "building Kryoptic" >&2
KRYOPTIC_OPENSSL_SOURCES="$ossl" CARGO_TARGET_DIR="$root/target" \
  cargo build --locked --release --manifest-path "$manifest" >&2
built=$(ls -t "$root"/target/release/deps/libkryoptic_pkcs11-*.so | head -1)
cp "$built" "$module.tmp"
mv "$module.tmp" "$module"
echo "$module"
