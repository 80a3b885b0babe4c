#!/usr/bin/env bash
# Sets up what the runbook needs on a Debian 12 host, and only what is missing:
# Debian packages, the Python environment (.venv), and libvirtd/virtlogd running.
# Idempotent: a second call installs nothing and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  mmdebstrap fio nvme-cli passt busybox-static linux-image-amd64 ovmf
  parted e2fsprogs xfsprogs dosfstools grub-pc-bin kmod cpio zstd
  openssh-client openssh-server libxml2-utils apt-utils python3-venv
)
# what only the test suite needs: Debian's headless browser and its WebDriver, which Selenium
# drives through JupyterLab and the report (tests/test_browser.py); no browser is downloaded
[ "${1:-}" = "--test" ] && DEB_PACKAGES+=(chromium chromium-driver)
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  say "this needs root (it installs Debian packages and starts libvirtd): run it as root or with sudo"; exit 1
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get: this setup knows Debian and its derivatives only; install the packages by hand: ${DEB_PACKAGES[*]}"; exit 1
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages: all ${#DEB_PACKAGES[@]} present, nothing to install"
else
  say "Debian packages: installing ${#missing[@]}: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/nested-nvme-apt.log 2>&1 \
    || { say "apt-get install failed; the last lines of /tmp/nested-nvme-apt.log:"; tail -20 /tmp/nested-nvme-apt.log; exit 1; }
fi

PY=${PYTHON:-python3}
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && .venv/bin/python -c 'import helpers, libvirt, papermill' 2>/dev/null; then
  say "Python environment: .venv up to date, nothing to install"
else
  say "Python environment: creating .venv and installing the project (libvirt-python builds against libvirt-dev)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  .venv/bin/python -m ipykernel install --sys-prefix --name nested-nvme --display-name "Nested NVMe runbook" >/dev/null
  rm -f .venv/.installed-*; touch "$stamp"
fi

.venv/bin/python -m helpers.lab.daemons
