#!/usr/bin/env bash
# Installs what lockstep's build, tests and demo need on Debian, if missing:
# protoc (build), MariaDB server and client tools (tests, demo), zstd, openssl,
# btrfs-progs and xfsprogs (the loop-mounted filesystem tests),
# python3 with PyYAML (demo, deploy/ syntax tests), and moto's S3 server in
# a venv at /opt/lockstep-moto (the S3 sink tests; see "moto" below).
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have protoc || need+=(protobuf-compiler)
have mariadbd || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
have mariadb || need+=(mariadb-client)
have mariadb-install-db || need+=(mariadb-server)
have zstd || need+=(zstd)
# openssl: the deploy/ script tests read certificates' names and fingerprints.
have openssl || need+=(openssl)
# btrfs-progs, xfsprogs: the physical-backup tests put datadirs on loop-mounted
# btrfs and XFS images (tests/src/loopfs.rs; they run as root only).
have btrfs || need+=(btrfs-progs)
have mkfs.btrfs || [ -x /usr/sbin/mkfs.btrfs ] || need+=(btrfs-progs)
have mkfs.xfs || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)
# python3 with PyYAML: the demo's JSON handling and the deploy/ syntax tests.
have python3 || need+=(python3)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
# The venv for moto needs python3's venv module (Debian splits it out).
MOTO_VENV="${LOCKSTEP_MOTO_VENV:-/opt/lockstep-moto}"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
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

# moto: an S3-compatible server the S3 sink tests (tests/src/s3.rs) and
# bench/s3-upload.sh start on 127.0.0.1; awscli beside it for the benchmark.
# In its own venv so it never touches the system's Python packages; the
# tests find it at /opt/lockstep-moto/bin/moto_server (or $LOCKSTEP_MOTO_SERVER:
# set it when LOCKSTEP_MOTO_VENV puts the venv elsewhere).
if [ ! -x "$MOTO_VENV/bin/moto_server" ] || [ ! -x "$MOTO_VENV/bin/aws" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "--- installing moto[server] and awscli into $MOTO_VENV"
  [ -x "$MOTO_VENV/bin/pip" ] || $sudo python3 -m venv "$MOTO_VENV"
  $sudo "$MOTO_VENV/bin/pip" install -q 'moto[server]>=5,<6' awscli
fi
"$MOTO_VENV/bin/moto_server" --help >/dev/null

have cargo || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
