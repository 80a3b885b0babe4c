"""Where the lab's images come from: the recipe (Debian suite and packages, the
layout inside L1 the runbook relies on) and the apt sources, read on L0 through
its command interface, so the recipe hash is L0's whichever machine asks."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..guest import Guest, Local

SUITE = "bookworm"
FILES = Path(__file__).with_name("image_files")
# The files whose content shapes the images (the recipe hashes them): the build, its
# file helpers, this module, and everything under image_files/.
RECIPE_CODE = ("build.py", "files.py", "sources.py")
DISK_SIZE = 4 * 1024**3
MIN_FREE = 8 * 1024**3
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Debian's kernel for virtual machines: fewer drivers to start, and an LZ4 bzImage
# that decompresses in a fraction of the generic kernel's xz time under TCG
# (each L1 boot, the KVM smoke boot and L2's boot). It has what the runbook needs:
# intel_iommu, IRQ remapping, kvm_amd, vfio-pci, nvme and virtio.
L1_PACKAGES = [
    "linux-image-cloud-amd64", "systemd-sysv", "udev", "kmod", "dbus", "openssh-server",
    "qemu-guest-agent", "pciutils", "nvme-cli", "xfsprogs", "fio", "grub-pc",
    "initramfs-tools", "iproute2", "netbase", "procps", "util-linux", "mount",
    "e2fsprogs", "libvirt-daemon-system", "libvirt-clients", "qemu-system-x86",
    # Debian's generic kernel next to it, not booted by default: the cloud kernel is built
    # without CONFIG_AMD_IOMMU, so an L1 with the AMD vIOMMU (parameters/lab-amd.yaml)
    # boots this one (stage 03's "A kernel with the vIOMMU's driver"). Installing it at run
    # time inside L1 under TCG took over 4 minutes.
    "linux-image-amd64",
]
L1_CACHED = ["qemu-utils"]  # .debs in L1's local apt repo, not installed
L1_REPO = "/var/lib/lab-repo"
L1_MASKED = [
    "e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer",
    "apt-daily-upgrade.timer", "man-db.timer", "fstrim.timer", "logrotate.timer",
    "dpkg-db-backup.timer", "systemd-networkd-wait-online.service",
    "libvirt-guests.service", "systemd-timesyncd.service", "nvmf-autoconnect.service",
    "nvmefc-boot-connections.service",
    # nothing in the lab uses them; each is a process or a mount more at every boot, on the
    # same two emulated CPUs as the units the first SSH login waits for
    "getty@tty1.service", "modprobe@drm.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    # the lab's fixed address is set by lab-net.service (image_files/l1)
    "systemd-networkd.service", "systemd-networkd.socket",
]
L1_ENABLED = ["lab-net.service", "lab-libvirt-warm.service"]
# systemd generators with nothing to generate in L1 (no encrypted, GPT-auto, hibernated or
# SysV-only units, no rc.local, nobody on a serial getty), masked: systemd runs every
# generator at each boot before it queues a single unit (a daemon-reload in L1 took 1.3-1.4 s
# with them, 0.9-1.0 s without). fstab's and the kernel command line's debug one stay.
L1_GENERATORS_OFF = [
    "systemd-cryptsetup-generator", "systemd-integritysetup-generator", "systemd-veritysetup-generator",
    "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator", "systemd-rc-local-generator",
    "systemd-run-generator", "systemd-system-update-generator", "systemd-sysv-generator",
    "systemd-getty-generator",
]
# /etc/grub.d scripts with nothing to find in L1 (each adds to every update-grub)
L1_GRUB_D_OFF = ["05_debian_theme", "20_linux_xen", "30_os-prober", "30_uefi-firmware", "41_custom"]
L1_GRUB = {
    "GRUB_TIMEOUT": "0",
    "GRUB_TIMEOUT_STYLE": "hidden",
    # net.ifnames=0: L1's NIC stays eth0 (no rename by udev to wait for before its address)
    "GRUB_CMDLINE_LINUX_DEFAULT": '"quiet console=ttyS0 net.ifnames=0"',
    "GRUB_CMDLINE_LINUX": '""',
    # GRUB writes to the serial console too (its "Booting `...'" line marks each boot in L1's
    # console log, where the runbook reads the current boot), but reads keys from the console
    # only: polling the serial port for a key held GRUB for 3.3 s before each boot under TCG
    # (its loop on the UART's line status register, sampled from L0), 0.9 s without.
    "GRUB_TERMINAL_INPUT": '"console"',
    "GRUB_TERMINAL_OUTPUT": '"console serial"',
    "GRUB_SERIAL_COMMAND": '"serial --unit=0 --speed=115200"',
    "GRUB_DISABLE_RECOVERY": "true",
}

L2_PACKAGES = [
    "pciutils", "nvme-cli", "xfsprogs", "fio", "util-linux", "mount", "kmod",
    "qemu-guest-agent", "busybox-static", "procps",
]
# Loaded by the initramfs (from RAM: faster than from disk under nested virt): what L2 needs
# to mount its root, reach its guest agent and see the NVMe.
L2_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_console", "nvme"]
# Loaded by L2's init after it reported ready, in the background: XFS (its insmod alone takes
# about a second under KVM in L1) is first needed by stage 05's mount, several steps later
# (a mount asks the kernel, which loads it anyway if it is still on its way).
L2_MODULES_LATER = ["xfs"]
L2_ROOT_IN_L1 = "/var/lib/libvirt/images/l2-root.raw"
L2_KERNEL_IN_L1 = "/var/lib/libvirt/boot/l2-vmlinuz"
L2_INITRD_IN_L1 = "/var/lib/libvirt/boot/l2-initrd.gz"
# Each PCI config space access in L2 is a VM exit that L1's KVM handles under emulation.
# pci=noearly skips the early AGP/aperture scans (~4 s in L2); pci=lastbus=0 skips the
# search for peer host bridges on every bus number the MCFG table allows (256 buses x 32
# slots read one by one: pci_subsys_init took 1.2 s of L2's boot, 0.0 s with it; q35 has
# one host bridge, and its buses behind the root ports are found through ACPI as before).
L2_CMDLINE = "console=ttyS0 root=/dev/vda rw init=/sbin/l2-init quiet pci=noearly,lastbus=0"

STRIP = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
         "/usr/share/locale/*", "/usr/share/lintian/*"]
# libvirt probes every qemu-system-<arch> it finds on its first call (seconds each
# under TCG); the lab's L1 only ever runs x86_64 guests.
L1_STRIP = ["/usr/bin/qemu-system-i386"]
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap", "parted": "parted", "partprobe": "parted",
    "losetup": "mount", "mkfs.ext4": "e2fsprogs", "mke2fs": "e2fsprogs",
    "blkid": "util-linux", "ssh-keygen": "openssh-client", "cpio": "cpio",
    "depmod": "kmod", "dpkg-deb": "dpkg",
}


# ---------------------------------------------------------------- apt sources

APT = "/etc/apt"


def debian_sources(l0: Guest | None = None) -> list[str]:
    """L0's apt sources for SUITE*, as one-line 'deb URI SUITE COMPONENTS' (read in one round trip)."""
    l0 = l0 or Local()
    listed = [f"{APT}/sources.list.d/{n}" for n in l0.listdir(f"{APT}/sources.list.d")]
    files = [f"{APT}/sources.list", *listed]
    entries = []
    with l0.snapshot(*files):
        for path in files:
            if path.endswith(".list"):
                entries += one_line_sources(l0.read_text(path) or "")
            elif path.endswith(".sources"):
                entries += deb822_sources(l0.read_text(path) or "")
    # The guests are plain Debian 12: a backports suite on L0 (setup adds one for
    # QEMU >= 8.1 under TCG) is L0's business and stays out of the images.
    lines = [f"deb {uri} {suite} {comps}" for uri, suite, comps in entries
             if (suite == SUITE or suite.startswith(SUITE + "-")) and not suite.endswith("-backports")]
    return list(dict.fromkeys(lines))


def one_line_sources(text: str) -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the 'deb' lines of a sources.list file."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(line) >= 4 and line[0] == "deb":
            out.append((line[1], line[2], " ".join(line[3:])))
    return out


def deb822_sources(text: str) -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the enabled 'deb' stanzas of a .sources file."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ", "\t")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append((uri, suite, fields.get("components", "main")))
    return out


# ---------------------------------------------------------------- recipe

def recipe_facts(sources: list[str]) -> dict:
    """Everything besides code that shapes the images."""
    return {
        "suite": SUITE, "sources": sources, "disk_size": DISK_SIZE,
        "l1_packages": L1_PACKAGES, "l1_cached": L1_CACHED, "l1_masked": L1_MASKED,
        "l1_enabled": L1_ENABLED, "l1_generators_off": L1_GENERATORS_OFF, "l1_grub_d_off": L1_GRUB_D_OFF,
        "l1_grub": L1_GRUB, "l1_repo": L1_REPO,
        "l2_packages": L2_PACKAGES, "l2_modules": L2_MODULES, "l2_modules_later": L2_MODULES_LATER, "l2_paths": [
            L2_ROOT_IN_L1, L2_KERNEL_IN_L1, L2_INITRD_IN_L1], "l2_cmdline": L2_CMDLINE,
        "strip": STRIP, "l1_strip": L1_STRIP,
    }


def recipe_hash(l0: Guest | None = None, sources: list[str] | None = None) -> str:
    """Short hash of the recipe: facts (with L0's apt sources), the build's code and
    every file under image_files/."""
    if sources is None:
        sources = debian_sources(l0)
    h = hashlib.sha256(json.dumps(recipe_facts(sources), sort_keys=True).encode())
    here = Path(__file__).parent
    for path in [*(here / n for n in RECIPE_CODE), *sorted(p for p in FILES.rglob("*") if p.is_file())]:
        h.update(str(path.relative_to(here)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]
