#!/usr/bin/env bash
# Install kdcache and what it needs on a fresh Debian machine (as root):
#   bash install.sh          the package and the Fashion-MNIST data
#   bash install.sh --dev    the same plus pytest and ruff
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.14.1 torchvision==0.29.1
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".${extra}"
