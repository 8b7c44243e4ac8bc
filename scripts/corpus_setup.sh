#!/usr/bin/env bash
# Installs the Rust sources the default model is trained on, from Debian:
#   rust-src              -> /usr/src/rustc-<version>/library/...   (std, core, alloc, ...)
#   every librust-*-dev   -> /usr/share/cargo/registry/<crate>-<version>/
# (~1,946 packages, many of them feature-only metapackages; ~1.3 GB with their C dependencies).
#
# Idempotent and non-interactive. Packages that cannot be installed together (Debian marks a few
# semver-suffixed ones as Breaks: against the unsuffixed package) are dropped after an apt
# simulation, and the rest is installed in batches; a batch that fails is retried one package at a
# time, so one broken or unavailable package never stops the others.
#
# Usage: scripts/corpus_setup.sh [--batch N] [--dry-run]
# Then:  /usr/bin/python3 scripts/corpus.py --out /path/to/corpus
set -euo pipefail

batch=200
dry_run=0
while (($#)); do
  case "$1" in
    --batch) batch="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "corpus_setup: unknown argument $1" >&2; exit 2 ;;
  esac
done

sudo_cmd=""
[[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold)

start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

installed() {  # prints installed package names among the given patterns
  dpkg-query -W -f='${Status} ${Package}\n' "$@" 2>/dev/null | awk '/install ok installed/ {print $4}' || true
}
disk_kb() { du -sk /usr/share/cargo/registry /usr/src/rustc-* 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
root_used_kb() { df -k --output=used / | tail -1 | tr -d ' '; }

used_before=$(root_used_kb)

# Package lists come from apt's cache; refresh it once if it is empty or older than a day.
if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1) ]]; then
  $sudo_cmd apt-get update -qq
fi

apt-cache pkgnames librust- | grep -- '-dev$' | LC_ALL=C sort -u > "$tmp/all"
echo rust-src >> "$tmp/all"
total=$(wc -l < "$tmp/all")
installed 'librust-*-dev' rust-src | LC_ALL=C sort -u > "$tmp/have"
LC_ALL=C comm -23 "$tmp/all" "$tmp/have" > "$tmp/want"
echo "corpus_setup: $total candidate packages (rust-src + librust-*-dev), $(wc -l < "$tmp/have") already installed, $(wc -l < "$tmp/want") to install"

# Drop packages apt cannot install together with the rest: simulate, take the packages named on
# the left of "pkg : Depends/Breaks ..." lines, remove them, repeat. A package whose installation
# would remove an installed one (a conflict with what an earlier run kept) is dropped too, so a
# rerun never swaps packages; the real install also runs with --no-remove.
: > "$tmp/dropped"
for _ in $(seq 1 50); do
  [[ -s "$tmp/want" ]] || break
  if apt-get install -s "${apt_opts[@]}" $(cat "$tmp/want") > "$tmp/sim" 2>&1; then
    grep -q '^Remv ' "$tmp/sim" || break
    : > "$tmp/off"
    while read -r p; do
      apt-get install -s "${apt_opts[@]}" "$p" 2>/dev/null | grep -q '^Remv ' && echo "$p" >> "$tmp/off"
    done < "$tmp/want"
    [[ -s "$tmp/off" ]] || { echo "corpus_setup: apt wants to remove packages; not installing" >&2; grep '^Remv ' "$tmp/sim" >&2; exit 1; }
    sed 's/^/  dropped (would remove an installed package): /' "$tmp/off"
  else
    sed -n '/unmet dependencies/,$p' "$tmp/sim" | grep -oP '^ {1,2}\S+(?= :)' | tr -d ' ' | LC_ALL=C sort -u > "$tmp/off" || true
    if [[ ! -s "$tmp/off" ]]; then
      echo "corpus_setup: apt simulation fails without naming a package; installing batch by batch" >&2
      tail -5 "$tmp/sim" >&2
      break
    fi
    sed 's/^/  dropped (conflict): /' "$tmp/off"
  fi
  cat "$tmp/off" >> "$tmp/dropped"
  grep -vxF -f "$tmp/off" "$tmp/want" > "$tmp/want2" || true
  mv "$tmp/want2" "$tmp/want"
done
[[ -s "$tmp/want" ]] && { grep -E 'newly installed' "$tmp/sim" 2>/dev/null | sed 's/^/corpus_setup: apt plan: /' || true; }

if ((dry_run)); then
  echo "corpus_setup: dry run, $(wc -l < "$tmp/want") packages would be installed"
  exit 0
fi

: > "$tmp/failed"
if [[ -s "$tmp/want" ]]; then
  split -l "$batch" "$tmp/want" "$tmp/batch."
  nb=$(ls "$tmp"/batch.* | wc -l)
  i=0
  for f in "$tmp"/batch.*; do
    i=$((i + 1))
    echo "corpus_setup: batch $i/$nb ($(wc -l < "$f") packages, $(( $(date +%s) - start )) s)"
    if ! $sudo_cmd apt-get install --no-remove "${apt_opts[@]}" $(cat "$f") > "$tmp/log" 2>&1; then
      echo "corpus_setup: batch $i failed ($(grep -m1 '^E:' "$tmp/log" || true)); retrying one by one"
      while read -r p; do
        installed "$p" | grep -qx "$p" && continue
        $sudo_cmd apt-get install --no-remove "${apt_opts[@]}" "$p" > "$tmp/log1" 2>&1 || { echo "  failed: $p"; echo "$p" >> "$tmp/failed"; }
      done < "$f"
    fi
  done
fi

n_rust=$(installed 'librust-*-dev' | wc -l)
n_all=$(apt-cache pkgnames librust- | grep -c -- '-dev$' || true)
has_src=$(installed rust-src | wc -l)
used_after=$(root_used_kb)
echo "corpus_setup: done in $(( $(date +%s) - start )) s"
echo "corpus_setup: librust-*-dev installed: $n_rust of $n_all; rust-src installed: $has_src"
echo "corpus_setup: dropped for conflicts: $(sort -u "$tmp/dropped" | tr '\n' ' ')"
echo "corpus_setup: failed to install: $(wc -l < "$tmp/failed") $(tr '\n' ' ' < "$tmp/failed")"
echo "corpus_setup: crate dirs: $(ls -d /usr/share/cargo/registry/*/ 2>/dev/null | wc -l)"
echo "corpus_setup: sources on disk (registry + rust-src): $(( $(disk_kb) / 1024 )) MiB;" \
     "root filesystem grew by $(( (used_after - used_before) / 1024 )) MiB in this run"
