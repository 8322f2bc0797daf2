#!/usr/bin/env bash
# Builds the local container images of the container tests, with no
# registry (nothing is ever pulled):
#
#   orgkey-base:SUITE    minimal Debian (this machine's release) made by
#                        mmdebstrap from the mirror this machine's apt
#                        configuration names, then `docker import`
#   orgkey:dev           the appliance (this tree's `orgkey` binary) with
#                        SoftHSM2 and p11-kit: a test fixture when started
#                        without a config (images/orgkey-dev/entrypoint.sh)
#   orgkey-postgres:15   Debian's PostgreSQL 15 (images/orgkey-postgres/)
#
# Each image carries the SHA-256 of its inputs in the label
# org.orgkey.inputs and is reused while they are unchanged: for the base, the
# Debian sources, release and mmdebstrap recipe; for the others, the base
# image's id, their recipe below, their images/ files and (orgkey:dev) the
# binary. The derived images are the base plus `apt-get install` in a
# container, committed (`docker commit`, no image builder needed). Prints each image's size and
# how long it took.
#
# ORGKEY_IMAGES_BIN=PATH takes that orgkey binary instead of building
# target/debug/orgkey. ORGKEY_IMAGES_REBUILD=1 rebuilds all three.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt-sources.sh
source scripts/lib/apt-sources.sh

command -v docker >/dev/null || { echo "images.sh: docker not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "images.sh: the Docker engine does not answer (docker info)" >&2; exit 1; }
if ! command -v mmdebstrap >/dev/null; then
  echo "installing Debian package: mmdebstrap" >&2
  sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
arch=$(dpkg --print-architecture)
base_image="orgkey-base:$suite"
dev_image="orgkey:dev"
pg_image="orgkey-postgres:15"
label=org.orgkey.inputs
work=target/images
mkdir -p "$work"

sources="$work/debian.sources"
orgkey_host_debian_sources "$suite" >"$sources"
[ -s "$sources" ] || {
  echo "images.sh: no '$suite' entry in /etc/apt/sources.list{,.d/} to take the Debian mirror from" >&2
  exit 1
}

# sha256 of everything given, in order: "file:PATH" stands for the file's
# contents, anything else for itself.
inputs_hash() {
  local x
  for x in "$@"; do
    case "$x" in
      file:*) printf 'file %s\n' "${x#file:}" && sha256sum <"${x#file:}" ;;
      *) printf 'text %s\n' "$x" ;;
    esac
  done | sha256sum | cut -d' ' -f1
}

current_hash() { docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$1" 2>/dev/null || true; }

report() { # image seconds verb
  local size
  size=$(docker image inspect -f '{{.Size}}' "$1")
  printf 'images.sh: %-22s %6.1f MB  %s in %ss\n' "$1" "$(awk -v s="$size" 'BEGIN { print s / 1000000 }')" "$3" "$2" >&2
}

# Drops the image an image name pointed at before a rebuild, unless still used.
drop_old() { [ -n "$1" ] && docker image rm "$1" >/dev/null 2>&1 || true; }

needs_build() { # image hash
  [ "${ORGKEY_IMAGES_REBUILD:-0}" = 1 ] || [ "$(current_hash "$1")" != "$2" ]
}

# Runs SCRIPT (as root) in a new container of FROM after copying
# "SRC:DEST" pairs into it, then commits it as IMAGE with the given
# Dockerfile-style changes. No image builder is involved.
derive() { # from image script changes-array-name copy-pairs...
  local from=$1 image=$2 script=$3 changes_name=$4
  shift 4
  local -n changes=$changes_name
  local cid pair old
  cid=$(docker create --user root --entrypoint /bin/sh "$from" -c "$script")
  # shellcheck disable=SC2064
  trap "docker rm -f $cid >/dev/null 2>&1 || true" EXIT
  for pair in "$@"; do docker cp "${pair%%:*}" "$cid:${pair#*:}"; done
  if ! docker start -a "$cid" >"$work/$(echo "$image" | tr ':/' '__').log" 2>&1; then
    echo "images.sh: building $image failed; its log:" >&2
    tail -n 40 "$work/$(echo "$image" | tr ':/' '__').log" >&2
    exit 1
  fi
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  local args=()
  local c
  for c in "${changes[@]}"; do args+=(--change "$c"); done
  docker commit "${args[@]}" "$cid" "$image" >/dev/null
  docker rm -f "$cid" >/dev/null
  trap - EXIT
  if [ "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then drop_old "$old"; fi
}

# Shell run in a derived image's container: installs Debian packages from the
# base's own sources (the host's mirror) and leaves no apt lists or caches.
apt_install() {
  printf 'set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq --no-install-recommends %s >/dev/null; apt-get clean; rm -rf /var/lib/apt/lists/*' "$*"
}

# --- orgkey-base ------------------------------------------------------------
base_packages=(ca-certificates)
# Docs, man pages and translations are left out (also of packages the derived
# images install: the dpkg excludes stay in the image). Package scripts start
# no services (our policy-rc.d, in place from the start and kept). mmdebstrap leaves the apt lists and caches empty.
base_args=(
  --quiet --variant=minbase --include="$(IFS=, && echo "${base_packages[*]}")"
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --skip=chroot/policy-rc.d
  --setup-hook='mkdir -p "$1/usr/sbin" && printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"'
)
base_changes=('CMD ["/bin/bash"]')
base_hash=$(inputs_hash "file:$sources" "$suite" "$arch" "${base_args[@]}" "${base_changes[@]}")
if needs_build "$base_image" "$base_hash"; then
  start=$SECONDS
  old=$(docker image inspect -f '{{.Id}}' "$base_image" 2>/dev/null || true)
  mmdebstrap "${base_args[@]}" "$suite" "$work/base.tar" "$sources"
  docker import -c "${base_changes[0]}" -c "LABEL $label=$base_hash" "$work/base.tar" "$base_image" >/dev/null
  rm -f "$work/base.tar"
  if [ "$old" != "$(docker image inspect -f '{{.Id}}' "$base_image")" ]; then drop_old "$old"; fi
  report "$base_image" $((SECONDS - start)) built
else
  report "$base_image" 0 reused
fi
base_id=$(docker image inspect -f '{{.Id}}' "$base_image")

# --- orgkey:dev ---------------------------------------------------------------
start=$SECONDS
if [ -n "${ORGKEY_IMAGES_BIN:-}" ]; then
  bin=$ORGKEY_IMAGES_BIN
else
  # The debug build the test suite already made (same Debian release as the
  # image, so its shared libraries match). A test fixture needs no release
  # build; see docs/decisions/0036-container-images-without-a-registry.md.
  # With --tests the features are those of `cargo test` (dev-dependencies
  # included), so after scripts/test.sh's build nothing is compiled again.
  cargo build --locked --quiet --bin orgkey --tests
  bin=target/debug/orgkey
fi
dev_packages=(softhsm2 p11-kit p11-kit-modules libnettle8 libhogweed6 libgmp10 curl)
dev_setup="$(apt_install "${dev_packages[@]}")
useradd --system --home-dir /var/lib/orgkey-dev --shell /usr/sbin/nologin orgkey
install -d -o orgkey -g orgkey -m 0700 /var/lib/orgkey-dev
install -d -o orgkey -g orgkey -m 0755 /run/orgkey /etc/orgkey
# Cluster nodes mount their shared volume here; a new volume takes this
# directory's owner, so the fixture (user orgkey) can write to it.
install -d -o orgkey -g orgkey -m 0700 /var/lib/orgkey-shared
chown root:root /usr/local/bin/orgkey /usr/local/bin/orgkey-entrypoint
chmod 0755 /usr/local/bin/orgkey /usr/local/bin/orgkey-entrypoint
orgkey --version"
dev_changes=(
  "ENV ORGKEY_LOG=info"
  # No ANSI colour codes in container logs.
  "ENV NO_COLOR=1"
  "EXPOSE 8443"
  "USER orgkey"
  "WORKDIR /var/lib/orgkey-dev"
  'ENTRYPOINT ["/usr/local/bin/orgkey-entrypoint"]'
  'CMD []'
)
dev_hash=$(inputs_hash "$base_id" "$dev_setup" "${dev_changes[@]}" file:images/orgkey-dev/entrypoint.sh "file:$bin")
if needs_build "$dev_image" "$dev_hash"; then
  # Debug info is most of a debug binary; the fixture does not need it.
  strip --strip-debug -o "$work/orgkey" "$bin"
  dev_changes+=("LABEL $label=$dev_hash")
  derive "$base_image" "$dev_image" "$dev_setup" dev_changes \
    "$work/orgkey:/usr/local/bin/orgkey" "images/orgkey-dev/entrypoint.sh:/usr/local/bin/orgkey-entrypoint"
  rm -f "$work/orgkey"
  report "$dev_image" $((SECONDS - start)) built
else
  report "$dev_image" $((SECONDS - start)) reused
fi

# --- orgkey-postgres:15 ---------------------------------------------------------
start=$SECONDS
pg_packages=(postgresql-15)
# No cluster from the package: the entry point makes one at first start.
pg_setup="mkdir -p /etc/postgresql-common/createcluster.d
echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/orgkey.conf
$(apt_install "${pg_packages[@]}")
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
chown root:root /usr/local/bin/orgkey-postgres-entrypoint
chmod 0755 /usr/local/bin/orgkey-postgres-entrypoint"
pg_changes=(
  "ENV PGDATA=/var/lib/postgresql/data"
  "EXPOSE 5432"
  "USER postgres"
  'ENTRYPOINT ["/usr/local/bin/orgkey-postgres-entrypoint"]'
  'CMD []'
)
pg_hash=$(inputs_hash "$base_id" "$pg_setup" "${pg_changes[@]}" file:images/orgkey-postgres/entrypoint.sh)
if needs_build "$pg_image" "$pg_hash"; then
  pg_changes+=("LABEL $label=$pg_hash")
  derive "$base_image" "$pg_image" "$pg_setup" pg_changes \
    "images/orgkey-postgres/entrypoint.sh:/usr/local/bin/orgkey-postgres-entrypoint"
  report "$pg_image" $((SECONDS - start)) built
else
  report "$pg_image" $((SECONDS - start)) reused
fi
