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
# what the lab image build runs on this machine (helpers/lab/build.py): installed first, so the
# build starts while the rest installs
IMAGE_PACKAGES=(mmdebstrap parted e2fsprogs kmod cpio openssh-client)
# what only the test suite needs: Debian's headless browser and its WebDriver, which Selenium
# drives through JupyterLab and the report (tests/test_browser.py); no browser is downloaded;
# virtinst, whose real virt-install --print-xml reads the seed's command (tests/test_seed_virt_install.py)
TEST=0 PARAMS=
while [ $# -gt 0 ]; do
  case "$1" in
    --test) TEST=1 ;;
    --params) PARAMS=${2:-}; shift ;;
    *) printf '[setup] unknown option %s: give --test and/or --params FILE\n' "$1"; exit 2 ;;
  esac
  shift
done
[ "$TEST" = 1 ] && DEB_PACKAGES+=(chromium chromium-driver virtinst)
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

# The package lists are read once. QEMU and libvirt come from bookworm-backports in an apt
# transaction of their own with `-t bookworm-backports`, so that what they depend on at a
# newer version (qemu-system-common and -data, seabios, libvirt's daemon parts) comes from
# there too: naming them pkg/bookworm-backports takes only the named packages from there, and
# on a machine with nothing installed apt then refuses the set as broken. Everything else comes
# from bookworm, in a transaction before it (the order is below).
from_backports=() first=() install=() all_from_backports=0 no_kernel=0
if [ "$want_backports" = 1 ]; then
  if [ ! -f "$BACKPORTS_SOURCE" ]; then
    say "QEMU for the lab: no vmx/svm on this CPU, so guests run under TCG; adding $BACKPORTS_SOURCE (QEMU >= 8.1 and a matching libvirt from bookworm-backports)"
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$BACKPORTS_SOURCE"
  fi
  qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -n "$qemu_version" ] && dpkg --compare-versions "$qemu_version" ge 1:8.1; then
    say "QEMU for the lab: qemu-system-x86 $qemu_version (>= 8.1), nothing to install"
  else
    say "QEMU for the lab: installing QEMU and libvirt from bookworm-backports (was: ${qemu_version:-none})"
    from_backports=("${BACKPORTS_PACKAGES[@]}")
    all_from_backports=1
  fi
fi

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  if [ "$want_backports" = 1 ] && [[ " ${BACKPORTS_PACKAGES[*]} " == *" $p "* ]]; then
    [ "$all_from_backports" = 1 ] && continue  # all of them already, from backports
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || { missing+=("$p"); from_backports+=("$p"); }
    continue
  fi
  if [ "$p" = linux-image-amd64 ]; then
    # only for the KVM smoke boot (stage 01) and the benchmark's floor: any kernel in /boot will
    # do, so a host that boots one of its own (Ubuntu's, a vendor's) gets no second kernel
    compgen -G '/boot/vmlinuz-*' >/dev/null && continue
    no_kernel=1
  fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && continue
  missing+=("$p")
  if [[ " ${IMAGE_PACKAGES[*]} " == *" $p "* ]]; then first+=("$p"); else install+=("$p"); fi
done
if [ ${#missing[@]} -eq 0 ] && [ ${#from_backports[@]} -eq 0 ]; then
  say "Debian packages: all ${#DEB_PACKAGES[@]} present, nothing to install"
elif [ ${#missing[@]} -gt 0 ]; then
  say "Debian packages: installing ${#missing[@]}: ${missing[*]}"
fi
apt_install() {  # apt_install [-t RELEASE] PACKAGE...: one transaction, its output in the log
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>/tmp/nested-nvme-apt.log 2>&1 \
    || { say "apt-get install failed; the last lines of /tmp/nested-nvme-apt.log:"; tail -20 /tmp/nested-nvme-apt.log; exit 1; }
}

PY=${PYTHON:-python3}

# The lab's guest images (mmdebstrap, the longest piece of a first run) build in the
# background while QEMU and libvirt and the Python environment install, when the parameter
# file given (make run's PARAMS) is the lab's on this machine (lab: true, no host.ssh). They
# need only Debian's python3 and the Debian packages (mmdebstrap, parted, e2fsprogs, kmod,
# cpio...), not QEMU; stage 02 then finds them in the cache. A second run finds them up to
# date in a second.
images_pid= images_log=/tmp/nested-nvme-images.log
wants_lab_images() {
  [ -n "$PARAMS" ] && [ -f "$PARAMS" ] || return 1
  grep -qE '^lab:[[:space:]]*true([[:space:]]|#|$)' "$PARAMS" || return 1
  ! awk '/^[^[:space:]#]/ {top=$1} top=="host:" && /^[[:space:]]+ssh:/ {found=1} END {exit !found}' "$PARAMS"
}
start_images() {
  wants_lab_images || return 0
  "$PY" -m helpers.lab.images >"$images_log" 2>&1 &
  images_pid=$!
  images_t0=$SECONDS
  # setup stopped early (a failed install, Ctrl-C): the build stops too, cleaning up after itself
  trap '[ -n "$images_pid" ] && kill "$images_pid" 2>/dev/null && wait "$images_pid" 2>/dev/null' EXIT
}

# Order: the package lists; what the image build runs; the image build starts; the rest of
# Debian's packages; QEMU and libvirt from backports; the Python environment (libvirt-python
# builds against libvirt-dev). The kernel package, where /boot had none (a container), is
# installed without an initramfs: nothing boots this machine from it, the smoke boot and the
# floor boot the kernel alone, and generating one (twice: the package, then dpkg's trigger)
# took half a minute.
if [ ${#from_backports[@]} -gt 0 ] || [ ${#first[@]} -gt 0 ] || [ ${#install[@]} -gt 0 ]; then
  apt_t0=$SECONDS n_install=$(( ${#from_backports[@]} + ${#first[@]} + ${#install[@]} ))
  : >/tmp/nested-nvme-apt.log
  apt-get update -qq
  if wants_lab_images; then
    [ ${#first[@]} -gt 0 ] && apt_install "${first[@]}"
  else
    install=("${first[@]}" "${install[@]}")
  fi
  start_images
  if [ ${#install[@]} -gt 0 ]; then
    if [ "$no_kernel" = 1 ]; then INITRD=No apt_install "${install[@]}"; else apt_install "${install[@]}"; fi
  fi
  [ ${#from_backports[@]} -gt 0 ] && apt_install -t bookworm-backports "${from_backports[@]}"
  say "Debian packages: $n_install installed in $((SECONDS - apt_t0)) s (log /tmp/nested-nvme-apt.log)"
  if [ ${#from_backports[@]} -gt 0 ]; then
    say "QEMU for the lab: now qemu-system-x86 $(dpkg-query -W -f='${Version}' qemu-system-x86), libvirt $(dpkg-query -W -f='${Version}' libvirt-daemon)"
  fi
else
  start_images
fi

stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && .venv/bin/python -c 'import helpers, libvirt, papermill' 2>/dev/null; then
  say "Python environment: .venv up to date, nothing to install"
else
  say "Python environment: creating .venv and installing the project (libvirt-python builds against libvirt-dev)"
  venv_t0=$SECONDS
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # uv (from PyPI, through pip) installs the project in a third of pip's time; where it cannot
  # be had (no wheel for this machine, a pip configured for an index of its own), pip does it.
  # Their output goes to a log (pip's warnings about this machine's pip configuration included),
  # shown when something fails.
  pip_log=/tmp/nested-nvme-pip.log
  if .venv/bin/pip install -q uv >"$pip_log" 2>&1 && .venv/bin/uv --version >/dev/null 2>&1; then
    installer=uv
    .venv/bin/uv pip install --python .venv/bin/python -e '.[dev]' >>"$pip_log" 2>&1 \
      || { say "installing the project with uv failed; the last lines of $pip_log:"; tail -20 "$pip_log"; exit 1; }
  else
    installer=pip
    { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'; } >>"$pip_log" 2>&1 \
      || { say "pip install failed; the last lines of $pip_log:"; tail -20 "$pip_log"; exit 1; }
  fi
  .venv/bin/python -m ipykernel install --sys-prefix --name nested-nvme --display-name "Nested NVMe runbook" >/dev/null
  rm -f .venv/.installed-*; touch "$stamp"
  say "Python environment: installed with $installer in $((SECONDS - venv_t0)) s (log $pip_log)"
fi

if [ -n "$images_pid" ]; then
  if wait "$images_pid"; then
    images_pid=
    if grep -q "images up to date" "$images_log"; then
      say "lab images: $(grep -m1 'images up to date' "$images_log" | sed 's/^images //'), nothing to build"
    else
      say "lab images: built in the background in $((SECONDS - images_t0)) s, $(grep -m1 '^l1 disk:' "$images_log" | sed 's/  (.*//') (log $images_log)"
    fi
  else
    images_pid=
    say "lab images: the build failed; the last lines of $images_log:"; tail -5 "$images_log"; exit 1
  fi
fi

.venv/bin/python -m helpers.lab.daemons
