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
# drives through JupyterLab and the report (tests/test_browser.py); no browser is downloaded;
# virtinst, whose real virt-install --print-xml reads the seed's command (tests/test_seed_virt_install.py)
[ "${1:-}" = "--test" ] && DEB_PACKAGES+=(chromium chromium-driver virtinst)
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  say "this needs root (it installs Debian packages and starts libvirtd): run it as root or with sudo"; exit 1
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get: this setup knows Debian and its derivatives only; install the packages by hand: ${DEB_PACKAGES[*]}"; exit 1
fi

# QEMU's multi-threaded TCG before 8.1 can build a translation block from a page
# another vCPU is live-patching (fixed upstream by "accel/tcg: Always lock pages
# before translation"); Debian 12 ships 7.2, and that race stalls the lab's L1.
# Where the lab needs TCG (no vmx/svm flag on this CPU), QEMU and a matching
# libvirt come from Debian's bookworm-backports, through an apt source file of
# the project's own. A host with hardware virtualization keeps its distribution's
# versions unless NESTED_NVME_BACKPORTS=1; NESTED_NVME_BACKPORTS=0 never adds it.
BACKPORTS_SOURCE=/etc/apt/sources.list.d/nested-nvme-backports.sources
BACKPORTS_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev)
want_backports=${NESTED_NVME_BACKPORTS:-auto}
if [ "$want_backports" = auto ]; then
  if grep -qwE 'vmx|svm' /proc/cpuinfo; then want_backports=0; else want_backports=1; fi
fi
codename=$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")
if [ "$want_backports" = 1 ] && [ "$codename" != bookworm ]; then
  say "QEMU from backports: skipped, this is ${codename:-an unknown release}, not Debian 12 (bookworm); make sure QEMU is 8.1 or newer"
  want_backports=0
fi

if [ "$want_backports" = 1 ]; then
  if [ ! -f "$BACKPORTS_SOURCE" ]; then
    say "QEMU for the lab: no vmx/svm on this CPU, so guests run under TCG; adding $BACKPORTS_SOURCE (QEMU >= 8.1 and a matching libvirt from bookworm-backports)"
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$BACKPORTS_SOURCE"
    apt-get update -qq
  fi
  qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -n "$qemu_version" ] && dpkg --compare-versions "$qemu_version" ge 1:8.1; then
    say "QEMU for the lab: qemu-system-x86 $qemu_version (>= 8.1), nothing to install"
  else
    say "QEMU for the lab: installing QEMU and libvirt from bookworm-backports (was: ${qemu_version:-none})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}" >/tmp/nested-nvme-apt.log 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}" >/tmp/nested-nvme-apt.log 2>&1; } \
      || { say "apt-get install -t bookworm-backports failed; the last lines of /tmp/nested-nvme-apt.log:"; tail -20 /tmp/nested-nvme-apt.log; exit 1; }
    say "QEMU for the lab: now qemu-system-x86 $(dpkg-query -W -f='${Version}' qemu-system-x86), libvirt $(dpkg-query -W -f='${Version}' libvirt-daemon)"
  fi
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
