#!/usr/bin/env bash
# Install what hacontrol needs on a Debian/Ubuntu machine, idempotently:
#   - mariadb-server, mariadb-backup and haproxy (Debian packages) when one is missing;
#   - a virtualenv in .venv with hacontrol and its test extra.
# Runs as root (CI, containers) or with sudo available. Quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# iptables: the controller-only partition test drops one user's packets (skipped without it).
# iproute2 (ip, tc) and nftables (nft): `sandbox up --netns`, hosts of their own for partitions.
# mariadb-backup (and its mbstream): `rebuild` re-clones a replica with it.
if ! have mariadbd || ! have haproxy || ! have mariadb-install-db || ! have iptables \
  || ! have mariadb-backup || ! have mbstream || ! have ip || ! have tc || ! have nft; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing mariadb-server, mariadb-backup, haproxy, iptables, iproute2" \
    "and nftables (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mariadb-server mariadb-backup \
    haproxy iptables iproute2 nftables >/dev/null
  # The package may start a system mariadb on 3306; the sandbox never uses it.
fi

# chromium (headless): the status page's browser test (skipped, saying why, without it).
if ! have chromium && [ -z "${HACONTROL_NO_BROWSER:-}" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing chromium (apt) for the status page's browser test"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
    || echo "bootstrap: chromium not installed: the browser test will be skipped"
fi

python=${PYTHON:-python3}
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating .venv and installing hacontrol[test]"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
