"""scripts/setup.sh's apt transactions, in order, with apt-get, dpkg-query and the image build's
Python replaced by stand-ins that write down how they were called (the real setup ran before the
suite: `make test`). What a machine with nothing installed needs: QEMU and libvirt from
bookworm-backports with `-t bookworm-backports` (named pkg/bookworm-backports, apt refused the
set there), what the image build runs installed first, the image build started before the rest."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKPORTS_SOURCE = Path("/etc/apt/sources.list.d/nested-nvme-backports.sources")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not BACKPORTS_SOURCE.exists() or not (ROOT / ".venv/bin/python").exists(),
    reason="needs root, the project's .venv and the backports source setup adds on this lab machine "
           "(so that nothing is written to /etc here)")

FAKES = {
    "apt-get": """#!/bin/sh
case "$1" in install) sleep 0.3 ;; esac
images=no; [ -e "$FAKE_DIR/images-started" ] && images=yes
echo "INITRD=${INITRD:-} images=$images apt-get $*" >> "$FAKE_DIR/log"
""",
    "dpkg-query": """#!/bin/sh
# dpkg-query -W -f=FORMAT PACKAGE
fmt=$2 pkg=$3
case "$fmt" in
  *Status*) case " $FAKE_INSTALLED " in *" $pkg "*) echo "install ok installed"; exit 0 ;; esac; exit 1 ;;
  *Version*) [ "$pkg" = qemu-system-x86 ] && [ -n "${FAKE_QEMU:-}" ] && { echo "$FAKE_QEMU"; exit 0; }
             [ "$pkg" = libvirt-daemon ] && { echo 11.3.0; exit 0; }; exit 1 ;;
esac
exit 1
""",
    "python": """#!/bin/sh
echo "python $*" >> "$FAKE_DIR/log"
touch "$FAKE_DIR/images-started"
""",
}


def run_setup(tmp_path: Path, installed: list[str], qemu: str = "") -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path),
               FAKE_INSTALLED=" ".join(installed), FAKE_QEMU=qemu, PYTHON=str(bin_dir / "python"),
               NESTED_NVME_BACKPORTS="1")
    r = subprocess.run(["bash", str(ROOT / "scripts/setup.sh"), "--params", str(ROOT / "parameters/lab.yaml")],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    log = tmp_path / "log"
    return log.read_text().splitlines() if log.exists() else []


BACKPORTS = ["qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients", "libvirt-dev"]
ALL = ["pkg-config", "fio", "nvme-cli", "passt", "busybox-static", "linux-image-amd64", "ovmf",
       "e2fsprogs", "xfsprogs", "dosfstools", "grub-pc-bin", "zstd", "openssh-client", "openssh-server",
       "libxml2-utils", "apt-utils", "python3-venv", "mmdebstrap", "parted", "kmod", "cpio"]


def test_nothing_installed_gives_three_transactions_in_order(tmp_path):
    missing = {"mmdebstrap", "parted", "fio", "nvme-cli", "linux-image-amd64"}
    log = run_setup(tmp_path, [p for p in ALL if p not in missing])
    apt = [x for x in log if " apt-get " in f" {x}"]
    assert apt[0].endswith("apt-get update -qq")
    first, rest, backports = apt[1:4]
    # what the image build runs, before the build starts
    assert first.split("--no-install-recommends ")[1].split() == ["mmdebstrap", "parted"]
    assert "images=no" in first
    assert log.index(next(x for x in log if x.startswith("python -m helpers.lab.images"))) > log.index(first)
    # the rest of Debian's packages, the build already going
    assert "images=yes" in rest and "fio" in rest and "nvme-cli" in rest and "-t " not in rest
    kernel_here = bool(glob.glob("/boot/vmlinuz-*"))
    assert ("linux-image-amd64" in rest) is not kernel_here  # a kernel in /boot: no second one
    if not kernel_here:
        assert rest.startswith("INITRD=No ")
    # QEMU and libvirt from backports, their dependencies with them
    assert "images=yes" in backports
    assert backports.split("--no-install-recommends ")[1].split() == ["-t", "bookworm-backports", *BACKPORTS]
    assert not any("/bookworm-backports" in x for x in apt)


def test_all_present_installs_nothing_and_still_checks_the_images(tmp_path):
    log = run_setup(tmp_path, ALL + BACKPORTS, qemu="1:10.0.2+ds-2+deb13u1~bpo12+1")
    assert not any(" apt-get " in f" {x}" for x in log)
    assert [x for x in log if x.startswith("python ")] == ["python -m helpers.lab.images"]
