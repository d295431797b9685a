#!/usr/bin/env bash
# Install what the benchmarks need beyond PyPI: rsync (daemon and client) and borgbackup,
# from Debian's packages. Idempotent: installs only what is missing, so the benches may call
# it on every run. Needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v borg >/dev/null 2>&1 || missing+=(borgbackup)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "bench/setup.sh: need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "bench/setup.sh: installing ${missing[*]} from Debian's packages" >&2
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
