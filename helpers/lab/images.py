"""Build the lab's guest images from Debian packages.

One raw, GRUB-bootable Debian disk for L1 (the golden image). Inside it sits
what L2 needs: a small ext4 root image, L1's own kernel and a tiny busybox
initramfs. Built with mmdebstrap, cached outside the repo, rebuilt only when
the recipe (package lists, this code, the files under image_files/, the apt
sources) changes.

    python -m helpers.lab.images [--force] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SUITE = "bookworm"
CACHE_DIR = Path("/var/cache/nested-nvme/images")
FILES = Path(__file__).with_name("image_files")
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
    # boots this one (stage 03, helpers/ops/iommu_kernel.py). Installing it at run time
    # inside L1 under TCG took over 4 minutes.
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
]
L1_ENABLED = ["systemd-networkd.service"]
# /etc/grub.d scripts with nothing to find in L1 (each adds to every update-grub)
L1_GRUB_D_OFF = ["05_debian_theme", "20_linux_xen", "30_os-prober", "30_uefi-firmware", "41_custom"]
L1_GRUB = {
    "GRUB_TIMEOUT": "0",
    "GRUB_TIMEOUT_STYLE": "hidden",
    "GRUB_CMDLINE_LINUX_DEFAULT": '"quiet console=ttyS0"',
    "GRUB_CMDLINE_LINUX": '""',
    "GRUB_TERMINAL": '"console serial"',
    "GRUB_SERIAL_COMMAND": '"serial --unit=0 --speed=115200"',
    "GRUB_DISABLE_RECOVERY": "true",
}

L2_PACKAGES = [
    "pciutils", "nvme-cli", "xfsprogs", "fio", "util-linux", "mount", "kmod",
    "qemu-guest-agent", "busybox-static", "procps",
]
# All loaded by the initramfs (from RAM: faster than from disk under nested virt).
L2_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_console",
              "nvme", "xfs"]
L2_ROOT_IN_L1 = "/var/lib/libvirt/images/l2-root.raw"
L2_KERNEL_IN_L1 = "/var/lib/libvirt/boot/l2-vmlinuz"
L2_INITRD_IN_L1 = "/var/lib/libvirt/boot/l2-initrd.gz"
# pci=noearly skips the early AGP/aperture scans of PCI config space (~4 s in L2)
L2_CMDLINE = "console=ttyS0 root=/dev/vda rw init=/sbin/l2-init quiet pci=noearly"

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


class LabImageError(Exception):
    """A build problem with a one-line explanation for the user."""


@dataclass
class LabImages:
    """The built images, as the runbook uses them."""
    l1_disk: Path
    ssh_key: Path
    ssh_host_pubkey: str
    recipe: str
    l2_root_in_l1: str
    l2_kernel_in_l1: str
    l2_initrd_in_l1: str
    l2_cmdline: str
    virt_packages_cached: list[str]


# ---------------------------------------------------------------- recipe

def debian_sources() -> list[str]:
    """The host's apt sources for SUITE*, as one-line 'deb URI SUITE COMPONENTS'."""
    apt = Path("/etc/apt")
    entries = []
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if path.suffix == ".list":
            entries += _one_line_sources(path)
        elif path.suffix == ".sources":
            entries += _deb822_sources(path)
    # The guests are plain Debian 12: a backports suite on L0 (setup adds one for
    # QEMU >= 8.1 under TCG) is L0's business and stays out of the images.
    lines = [f"deb {uri} {suite} {comps}" for uri, suite, comps in entries
             if (suite == SUITE or suite.startswith(SUITE + "-")) and not suite.endswith("-backports")]
    return list(dict.fromkeys(lines))


def _one_line_sources(path: Path) -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the 'deb' lines of a sources.list file."""
    out = []
    for line in _read(path).splitlines():
        line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(line) >= 4 and line[0] == "deb":
            out.append((line[1], line[2], " ".join(line[3:])))
    return out


def _deb822_sources(path: Path) -> list[tuple[str, str, str]]:
    """(uri, suite, components) of the enabled 'deb' stanzas of a .sources file."""
    out = []
    for stanza in re.split(r"\n\s*\n", _read(path)):
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


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def recipe_facts() -> dict:
    """Everything besides code that shapes the images."""
    return {
        "suite": SUITE, "sources": debian_sources(), "disk_size": DISK_SIZE,
        "l1_packages": L1_PACKAGES, "l1_cached": L1_CACHED, "l1_masked": L1_MASKED,
        "l1_enabled": L1_ENABLED, "l1_grub_d_off": L1_GRUB_D_OFF,
        "l1_grub": L1_GRUB, "l1_repo": L1_REPO,
        "l2_packages": L2_PACKAGES, "l2_modules": L2_MODULES, "l2_paths": [
            L2_ROOT_IN_L1, L2_KERNEL_IN_L1, L2_INITRD_IN_L1], "l2_cmdline": L2_CMDLINE,
        "strip": STRIP, "l1_strip": L1_STRIP,
    }


def recipe_hash() -> str:
    """Short hash of the recipe: facts, this file and every file under image_files/."""
    h = hashlib.sha256(json.dumps(recipe_facts(), sort_keys=True).encode())
    here = Path(__file__).parent
    for path in [Path(__file__), *sorted(p for p in FILES.rglob("*") if p.is_file())]:
        h.update(str(path.relative_to(here)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- cache

def load_images(cache_dir: Path = CACHE_DIR) -> LabImages | None:
    """The cached images if they exist and their recipe is current, else None."""
    recipe = recipe_hash()
    images = _read_manifest(Path(cache_dir) / recipe)
    return images if images and images.recipe == recipe else None


def _read_manifest(folder: Path) -> LabImages | None:
    """The LabImages saved in folder/images.json, if it and its files are there."""
    try:
        data = json.loads((folder / "images.json").read_text())
        images = LabImages(**{**data, "l1_disk": folder / data["l1_disk"],
                              "ssh_key": folder / data["ssh_key"]})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return images if images.l1_disk.is_file() and images.ssh_key.is_file() else None


def _save_manifest(folder: Path, images: LabImages) -> None:
    data = asdict(images)
    data["l1_disk"], data["ssh_key"] = images.l1_disk.name, images.ssh_key.name
    (folder / "images.json").write_text(json.dumps(data, indent=2) + "\n")


def build_images(cache_dir: Path = CACHE_DIR, force: bool = False, progress=print) -> LabImages:
    """Build the images into cache_dir unless the cached ones match the recipe."""
    cache_dir = Path(cache_dir)
    recipe = recipe_hash()
    images = None if force else load_images(cache_dir)
    if images:
        progress(f"images up to date (recipe {recipe})")
        return images
    preflight(cache_dir)
    with _locked(cache_dir):
        remove_stale_builds(cache_dir)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
        try:
            with open(cache_dir / "build.log", "w") as log:
                out = Build(work, log, progress).run(recipe)
            images = _install(out, cache_dir, recipe)
        finally:
            release_mounts(work)
            shutil.rmtree(work, ignore_errors=True)
    progress(f"images built (recipe {recipe}) in {cache_dir / recipe}")
    return images


def _install(out: Path, cache_dir: Path, recipe: str) -> LabImages:
    """Move a finished build into cache_dir/<recipe>; drop older recipes no VM uses."""
    final = cache_dir / recipe
    if final.exists():
        shutil.rmtree(final)
    os.chmod(out, 0o755)
    out.rename(final)
    for old in cache_dir.iterdir():
        if old.is_dir() and old != final and re.fullmatch(r"[0-9a-f]{12}", old.name) \
                and not in_use(old):
            shutil.rmtree(old, ignore_errors=True)
    return _read_manifest(final)


def in_use(folder: Path) -> bool:
    """Whether a running process (say a VM on an older golden disk) has a file in folder open."""
    prefix = str(folder.resolve()) + "/"
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


@contextlib.contextmanager
def _locked(cache_dir: Path):
    with open(cache_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabImageError(f"another image build is running in {cache_dir}") from None
        yield


def preflight(cache_dir: Path) -> None:
    """Fail early, with one clear line, on what the user can fix."""
    if os.geteuid() != 0:
        raise LabImageError("building the lab images needs root (mmdebstrap --mode=root, loop devices)")
    os.environ["PATH"] = SBIN_PATH + ":" + os.environ.get("PATH", "")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise LabImageError(f"missing host tools: apt-get install {' '.join(missing)}")
    if not debian_sources():
        raise LabImageError(f"no 'deb ... {SUITE}' source in /etc/apt/sources.list(.d)")
    make_dirs(cache_dir)
    free = shutil.disk_usage(cache_dir).free
    if free < MIN_FREE:
        raise LabImageError(f"not enough disk space in {cache_dir}: {free / 2**30:.1f} GiB free, "
                            f"{MIN_FREE / 2**30:.0f} GiB needed")
    if not Path("/dev/loop-control").exists():
        raise LabImageError("no loop devices (/dev/loop-control missing): modprobe loop")


def remove_stale_builds(cache_dir: Path) -> None:
    """Clean up what a killed build left: mounts, loop devices, temp dirs."""
    for work in cache_dir.glob("build-*"):
        release_mounts(work)
        shutil.rmtree(work, ignore_errors=True)


def release_mounts(work: Path) -> None:
    """Unmount everything under work and detach loop devices backed by files in it."""
    prefix = str(work.resolve()) + "/"
    targets = [line.split()[1] for line in _read(Path("/proc/mounts")).splitlines()]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    out = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(prefix):
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)


# ---------------------------------------------------------------- build

class Build:
    """One build in a temp dir under the cache dir; run() returns the output folder."""

    def __init__(self, work: Path, log, progress):
        self.work, self.log, self.progress = work, log, progress
        self.start = time.monotonic()
        self.sources = debian_sources()

    def say(self, msg: str) -> None:
        self.progress(f"[{time.monotonic() - self.start:6.1f}s] {msg}")

    def sh(self, *cmd, **kw) -> str:
        """Run a command, log its output, raise LabImageError if it fails."""
        cmd = [str(c) for c in cmd]
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        self.log.write(r.stdout)
        self.log.flush()
        if r.returncode:
            last = (r.stdout.strip().splitlines() or ["no output"])[-1]
            raise LabImageError(f"{cmd[0]} failed (exit {r.returncode}): {last} [log: {self.log.name}]")
        return r.stdout

    def chroot(self, root: Path, *cmd) -> str:
        return self.sh("chroot", root, *cmd, env={"PATH": SBIN_PATH, "LC_ALL": "C.UTF-8",
                                                  "DEBIAN_FRONTEND": "noninteractive"})

    def run(self, recipe: str) -> Path:
        out = self.out = self.work / "out"
        out.mkdir()
        disk = out / "l1.raw"
        with contextlib.ExitStack() as stack:
            loop, part = self.make_disk(disk, stack)
            uuid = self.sh("blkid", "-s", "UUID", "-o", "value", part).strip()
            root = self.work / "l1root"
            root.mkdir()
            self.sh("mount", part, root)
            stack.callback(self.sh, "umount", root)
            l2root = self.work / "l2root"
            self.debootstrap(root, l2root)
            kver = kernel_version(root)
            self.make_l2(root, l2root, kver)
            cached = self.make_repo(root)
            host_pubkey = self.configure_l1(root, uuid, out)
            with chroot_mounts(root, loop, part, uuid, self.sh):
                self.finish_l1(root, loop)
        self.say(f"l1 disk ready: {disk_usage(disk)}")
        images = LabImages(
            l1_disk=disk, ssh_key=out / "lab_key", ssh_host_pubkey=host_pubkey, recipe=recipe,
            l2_root_in_l1=L2_ROOT_IN_L1, l2_kernel_in_l1=L2_KERNEL_IN_L1,
            l2_initrd_in_l1=L2_INITRD_IN_L1, l2_cmdline=L2_CMDLINE,
            virt_packages_cached=cached)
        _save_manifest(out, images)
        return out

    # -- disk

    def make_disk(self, disk: Path, stack) -> tuple[str, str]:
        """Sparse raw disk, msdos label, one ext4 partition; returns (loop, partition)."""
        self.say(f"creating {DISK_SIZE // 2**30} GiB raw disk")
        with open(disk, "wb") as f:
            f.truncate(DISK_SIZE)
        os.chmod(disk, 0o644)
        self.sh("parted", "-s", disk, "mklabel", "msdos", "mkpart", "primary", "ext4",
                "1MiB", "100%", "set", "1", "boot", "on")
        loop = self.sh("losetup", "-P", "--find", "--show", disk).strip()
        stack.callback(self.sh, "losetup", "-d", loop)
        self.sh("partprobe", loop)  # without it /dev/loopNp1 may never appear
        part = loop + "p1"
        for _ in range(100):
            if Path(part).exists():
                break
            time.sleep(0.1)
        else:
            raise LabImageError(f"{part} did not appear after partprobe {loop}")
        self.sh("mkfs.ext4", "-q", "-L", "l1root", "-i", "32768",
                "-E", "lazy_itable_init=0,lazy_journal_init=0", part)
        return loop, part

    # -- mmdebstrap

    def debootstrap(self, l1root: Path, l2root: Path) -> None:
        """Run mmdebstrap for L1 and L2 side by side (dpkg is mostly single-threaded)."""
        strip = [f"--dpkgopt=path-exclude={p}" for p in STRIP]
        repo_hook = (
            'export APT_CONFIG="$MMDEBSTRAP_APT_CONFIG"; apt-get clean && '
            f'apt-get install --download-only -y -o APT::Install-Recommends=false {" ".join(L1_CACHED)} && '
            f'mkdir -p "$1{L1_REPO}" && mv "$1"/var/cache/apt/archives/*.deb "$1{L1_REPO}/"')
        early_hook = f'cp -R "{FILES / "l1-early"}"/. "$1"/'  # before the kernel's initramfs
        jobs = {
            "l1": ["mmdebstrap", "--mode=root", "--variant=minbase",
                   "--include=" + ",".join(L1_PACKAGES), *strip,
                   *(f"--dpkgopt=path-exclude={p}" for p in L1_STRIP), f"--essential-hook={early_hook}",
                   f"--customize-hook={repo_hook}", SUITE, l1root, *self.sources],
            "l2": ["mmdebstrap", "--mode=root", "--variant=minbase",
                   "--include=" + ",".join(L2_PACKAGES), *strip, SUITE, l2root, *self.sources],
        }
        self.say("mmdebstrap: L1 and L2 root filesystems, in parallel")
        procs = {}
        try:
            for name, cmd in jobs.items():
                logf = open(self.work / f"mmdebstrap-{name}.log", "w")
                procs[name] = (subprocess.Popen([str(c) for c in cmd], stdout=logf,
                                                stderr=subprocess.STDOUT), logf)
            running = dict(procs)
            while running:
                time.sleep(0.5)
                for name, (proc, logf) in list(running.items()):
                    if proc.poll() is not None:
                        del running[name]
                        self.job_done(name, proc.returncode, logf)
        finally:
            for proc, logf in procs.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
                logf.close()

    def job_done(self, name: str, rc: int, logf) -> None:
        """Copy a finished mmdebstrap's log into the build log; raise if it failed."""
        logf.close()
        text = Path(logf.name).read_text()
        self.log.write(f"$ mmdebstrap ({name})\n{text}")
        if rc:
            last = (text.strip().splitlines() or ["no output"])[-1]
            raise LabImageError(f"mmdebstrap {name} failed (exit {rc}): {last} [log: {self.log.name}]")
        self.say(f"mmdebstrap {name} done")

    # -- L2

    def make_l2(self, l1root: Path, l2root: Path, kver: str) -> None:
        """Finish the L2 root, then put its image, kernel and initrd inside L1."""
        self.say("L2: modules, init, ext4 image, initramfs")
        moddir = l1root / "lib/modules" / kver
        copy_modules(moddir, l2root / "lib/modules" / kver,
                     module_closure(moddir, L2_MODULES))
        self.sh("depmod", "-b", l2root, kver)
        copy_tree(FILES / "l2", l2root)
        write(l2root / "etc/l2-modules", "\n".join(L2_MODULES) + "\n")
        write(l2root / "etc/hostname", "l2\n")
        write(l2root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 l2\n")
        write(l2root / "etc/fstab", "/dev/vda / ext4 defaults 0 0\n")
        write(l2root / "etc/resolv.conf", "")
        (l2root / "etc/mtab").unlink(missing_ok=True)
        os.symlink("../proc/self/mounts", l2root / "etc/mtab")
        for junk in ["var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log"]:
            empty_dir(l2root / junk)
        image = l1root / L2_ROOT_IN_L1.lstrip("/")
        image.parent.mkdir(parents=True, exist_ok=True)
        size = ext4_size(tree_bytes(l2root))
        self.sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", "l2root", "-d", l2root,
                "-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
                image, f"{size // 1024}k")
        kernel = l1root / L2_KERNEL_IN_L1.lstrip("/")
        kernel.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(l1root / "boot" / f"vmlinuz-{kver}", kernel)
        self.make_initrd(l2root, moddir, l1root / L2_INITRD_IN_L1.lstrip("/"))
        write(self.out / "l2-root.size", disk_usage(image) + "\n")
        self.say(f"l2 root image: {disk_usage(image)}")

    def make_initrd(self, l2root: Path, moddir: Path, dest: Path) -> None:
        """busybox + L2_MODULES + image_files/l2-initrd/init, gzipped newc cpio."""
        tree = self.work / "l2initrd"
        order = module_closure(moddir, L2_MODULES)
        copy_modules(moddir, tree / "lib/modules", order)
        write(tree / "etc/modules", "\n".join(order) + "\n")
        (tree / "bin").mkdir()
        shutil.copy2(l2root / "bin/busybox", tree / "bin/busybox")
        copy_tree(FILES / "l2-initrd", tree)
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=tree,
                                 input="\n".join(names).encode(), capture_output=True)
        if archive.returncode:
            raise LabImageError(f"cpio failed: {archive.stderr.decode().strip()}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(gzip.compress(archive.stdout, 6))

    # -- L1

    def make_repo(self, root: Path) -> list[str]:
        """Index the .debs the customize hook left in L1_REPO; return their package names."""
        repo = root / L1_REPO.lstrip("/")
        stanzas, names = [], []
        for deb in sorted(repo.glob("*.deb")):
            control = self.sh("dpkg-deb", "-f", deb).rstrip("\n")
            data = deb.read_bytes()
            names.append(re.search(r"^Package: (\S+)", control, re.M).group(1))
            stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                           f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                           f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
        missing = set(L1_CACHED) - set(names)
        if missing:
            raise LabImageError(f"local repo lacks {' '.join(sorted(missing))}: already installed in L1?")
        write(repo / "Packages", "\n".join(stanzas))
        write(root / "etc/apt/sources.list", f"deb [trusted=yes] file:{L1_REPO} ./\n")
        for extra in (root / "etc/apt/sources.list.d").glob("*"):
            extra.unlink()
        self.say(f"L1 local apt repo: {' '.join(names)}")
        return names

    def configure_l1(self, root: Path, uuid: str, out: Path) -> str:
        """Files of the fresh L1: identity, fstab, ssh keys, grub defaults. Returns the host key."""
        self.say("L1: configuration, ssh keys")
        copy_tree(FILES / "l1", root)
        write(root / "etc/hostname", "l1\n")
        write(root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 l1\n"
                                  "::1 localhost ip6-localhost ip6-loopback\n")
        write(root / "etc/resolv.conf", "")
        write(root / "etc/machine-id", os.urandom(16).hex() + "\n")
        # pass 0: no fsck of the scratch root at each boot (the initramfs's and systemd's, ~1 s each under TCG)
        write(root / "etc/fstab", f"UUID={uuid} / ext4 errors=remount-ro 0 0\n")
        autostart = root / "etc/libvirt/qemu/networks/autostart/default.xml"
        autostart.unlink(missing_ok=True)
        grub = root / "etc/default/grub"
        write(grub, set_shell_vars(grub.read_text(), L1_GRUB))
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        hostkey = root / "etc/ssh/ssh_host_ed25519_key"
        self.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@l1", "-f", hostkey)
        self.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nested-nvme-lab",
                "-f", out / "lab_key")
        os.chmod(out / "lab_key", 0o600)
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        write(ssh_dir / "authorized_keys", (out / "lab_key.pub").read_text(), 0o600)
        return " ".join(Path(f"{hostkey}.pub").read_text().split()[:2])

    def finish_l1(self, root: Path, loop: str) -> None:
        """In a chroot: units, offline apt index, grub-install, update-grub."""
        self.say("L1: systemd units, apt index, grub")
        self.chroot(root, "systemctl", "mask", *L1_MASKED)
        self.chroot(root, "systemctl", "enable", *L1_ENABLED)
        for script in L1_GRUB_D_OFF:
            (root / "etc/grub.d" / script).chmod(0o644)
        # libvirtd starts on its socket when first used; not at boot
        (root / "etc/systemd/system/multi-user.target.wants/libvirtd.service").unlink(missing_ok=True)
        self.chroot(root, "apt-get", "update")
        self.chroot(root, "grub-install", "--target=i386-pc", loop)
        self.chroot(root, "update-grub")
        cfg = (root / "boot/grub/grub.cfg").read_text()
        if "root=UUID=" not in cfg:
            raise LabImageError("update-grub did not write root=UUID= into grub.cfg")


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def chroot_mounts(root: Path, loop: str, part: str, uuid: str, sh):
    """/proc, /sys and a private /dev (tmpfs with just the nodes grub and apt need)."""
    mounted = []
    try:
        for fstype, where in [("proc", "proc"), ("sysfs", "sys"), ("tmpfs", "dev")]:
            sh("mount", "-t", fstype, fstype, root / where)
            mounted.append(root / where)
        dev = root / "dev"
        for name in ["null", "zero", "full", "random", "urandom", "tty", loop[5:], part[5:]]:
            st = os.stat(f"/dev/{name}")
            os.mknod(dev / name, st.st_mode, st.st_rdev)
        for name, target in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]:
            os.symlink(target, dev / name)
        (dev / "disk/by-uuid").mkdir(parents=True)
        os.symlink(f"../../{part[5:]}", dev / "disk/by-uuid" / uuid)  # so update-grub writes root=UUID=
        (dev / "pts").mkdir()
        sh("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", dev / "pts")
        mounted.append(dev / "pts")
        yield
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", where], capture_output=True)


def kernel_version(root: Path) -> str:
    """The kernel L1 boots by default and L2 boots: the one cloud kernel in root
    (the generic kernel beside it is only for an AMD vIOMMU)."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    cloud = [k for k in kernels if k.endswith("-cloud-amd64")]
    if len(cloud) != 1:
        raise LabImageError(f"expected one cloud kernel in the L1 image, found {kernels}")
    return cloud[0]


def module_closure(moddir: Path, names: list[str]) -> list[str]:
    """Relative paths of the modules names and their dependencies, dependencies first.
    A name built into the kernel (modules.builtin) needs no file and is left out."""
    deps, by_name = {}, {}
    builtin_list = moddir / "modules.builtin"
    builtin = {re.sub(r"\.ko(\..*)?$", "", Path(line).name).replace("-", "_")
               for line in (builtin_list.read_text().split() if builtin_list.exists() else [])}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[re.sub(r"\.ko(\..*)?$", "", Path(mod).name).replace("-", "_")] = mod
    order = []

    def visit(mod):
        if mod not in order:
            for dep in deps.get(mod, []):
                visit(dep)
            order.append(mod)

    for name in names:
        if name in builtin and name not in by_name:
            continue
        if name not in by_name:
            raise LabImageError(f"kernel module {name} not found in {moddir}")
        visit(by_name[name])
    return order


def copy_modules(moddir: Path, dest: Path, modules: list[str]) -> None:
    """Copy modules (paths relative to moddir) and, for a full tree, its builtin lists."""
    for mod in modules:
        (dest / mod).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / mod, dest / mod)
    if dest.name == moddir.name:
        for meta in ["modules.order", "modules.builtin", "modules.builtin.modinfo"]:
            if (moddir / meta).exists():
                shutil.copy2(moddir / meta, dest / meta)


def copy_tree(src: Path, dest: Path) -> None:
    """Copy the files of src into dest; scripts under */sbin or */bin become executable."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            executable = path.parent.name in ("sbin", "bin") or path.name == "init"
            os.chmod(target, 0o755 if executable else 0o644)


def set_shell_vars(text: str, values: dict[str, str]) -> str:
    """Set NAME=value lines in a shell-style config (like /etc/default/grub)."""
    for name, value in values.items():
        line = f"{name}={value}"
        pattern = re.compile(rf"^#?\s*{name}=.*$", re.M)
        text = pattern.sub(line, text, count=1) if pattern.search(text) else text + line + "\n"
    return text


def make_dirs(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask (libvirt-qemu must reach the L1 disk)."""
    if not path.exists():
        make_dirs(path.parent)
        path.mkdir()
        os.chmod(path, 0o755)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def empty_dir(path: Path) -> None:
    for child in path.glob("*"):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def tree_bytes(root: Path) -> int:
    """Bytes used by the files under root (blocks, hard links counted once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def ext4_size(used: int) -> int:
    """Room for used bytes plus 25% and 256 MiB, in 64 MiB steps."""
    step = 64 * 2**20
    return -(-(used * 5 // 4 + 256 * 2**20) // step) * step


def disk_usage(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size / 2**20:.0f} MiB apparent / {st.st_blocks * 512 / 2**20:.0f} MiB on disk"


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.lab.images",
                                     description="Build the lab's L1/L2 guest images.")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in finally blocks
    start = time.monotonic()
    try:
        images = build_images(args.cache_dir, force=args.force)
    except LabImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"total time: {time.monotonic() - start:.1f} s")
    print(f"l1 disk: {disk_usage(images.l1_disk)}  ({images.l1_disk})")
    print(f"l2 root: {l2_size_note(images)}")
    print(f"ssh key: {images.ssh_key}")
    print(f"l1 host key: {images.ssh_host_pubkey}")
    print(f"cached, not installed in L1: {' '.join(images.virt_packages_cached)}")
    return 0


def l2_size_note(images: LabImages) -> str:
    """The L2 root image's size, recorded at build time (it lives inside the L1 disk)."""
    note = images.l1_disk.with_name("l2-root.size")
    return note.read_text().strip() if note.exists() else "(inside the l1 disk)"


if __name__ == "__main__":
    sys.exit(main())
