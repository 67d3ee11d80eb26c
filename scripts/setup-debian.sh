#!/usr/bin/env bash
# Installs what lockstep's build, tests and demo need on Debian, if missing:
# protoc (build), MariaDB server and client tools (tests, demo), zstd,
# python3 with PyYAML (demo, deploy/ syntax tests).
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have protoc || need+=(protobuf-compiler)
have mariadbd || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
have mariadb || need+=(mariadb-client)
have mariadb-install-db || need+=(mariadb-server)
have zstd || need+=(zstd)
# python3 with PyYAML: the demo's JSON handling and the deploy/ syntax tests.
have python3 || need+=(python3)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
for extra in "$@"; do
  case "$extra" in
    mydumper) have mydumper || need+=(mydumper) ;;
    mariadb-backup) have mariadb-backup || need+=(mariadb-backup) ;;
    *) need+=("$extra") ;;
  esac
done

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "--- installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # The Debian package would start a system server; tests run their own.
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

have cargo || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
