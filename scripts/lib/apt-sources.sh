# Shared by scripts/images.sh: the Debian entries of this machine's own apt
# configuration, as one deb822 document on stdout.
# shellcheck shell=bash

# Prints every enabled binary ("deb") source of /etc/apt/sources.list and
# /etc/apt/sources.list.d/*.{list,sources} whose suite is SUITE or SUITE-*
# (bookworm, bookworm-updates, bookworm-security): the Debian mirror the host
# uses, never a hard-coded one. Third-party repositories (other suite names)
# are left out. One-line entries are turned into deb822 stanzas.
orgkey_host_debian_sources() {
  local suite=$1 etc=${ORGKEY_APT_ETC:-/etc/apt} f
  local files=()
  [ -f "$etc/sources.list" ] && files+=("$etc/sources.list")
  for f in "$etc"/sources.list.d/*.list "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  ((${#files[@]})) || return 0
  for f in "${files[@]}"; do
    case "$f" in
      *.sources)
        awk -v suite="$suite" '
          function flush() {
            if (stanza != "" && types ~ /(^| )deb( |$)/ && enabled != "no" && keep) printf "%s\n", stanza
            stanza = ""; types = ""; enabled = ""; keep = 0
          }
          /^[ \t]*$/ { flush(); next }
          /^#/ { next }
          {
            line = $0; sub(/[ \t]+$/, "", line)
            key = tolower(line); sub(/:.*/, "", key)
            val = line; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val
            if (key == "enabled") enabled = tolower(val)
            if (key == "suites") {
              n = split(val, s, /[ \t]+/)
              for (i = 1; i <= n; i++) if (s[i] == suite || index(s[i], suite "-") == 1) keep = 1
            }
            stanza = stanza line "\n"
          }
          END { flush() }' "$f"
        ;;
      *)
        awk -v suite="$suite" '
          /^[ \t]*deb[ \t]/ {
            opts = ""; i = 2
            if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opts = opts " " $i; i++ } opts = opts " " $i; i++ }
            uri = $i; s = $(i + 1); comps = ""
            for (j = i + 2; j <= NF && $j !~ /^#/; j++) comps = comps (comps == "" ? "" : " ") $j
            if (s != suite && index(s, suite "-") != 1) next
            printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\n", uri, s, comps
            if (opts ~ /signed-by=/) { sb = opts; sub(/.*signed-by=/, "", sb); sub(/[] ].*/, "", sb); printf "Signed-By: %s\n", sb }
            printf "\n"
          }' "$f"
        ;;
    esac
  done
}
