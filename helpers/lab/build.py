"""The lab images' build, on L0: a raw GRUB-bootable Debian disk for L1 (the
golden image) with, inside it, what L2 needs (an ext4 root image, L1's kernel
and a busybox initramfs). Its commands go through L0's command interface
(``Guest``); the build runs on L0 itself (``helpers.lab.images`` starts it there)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..guest import Guest, Local
from .cache import LabImages, save_manifest
from .files import (LabImageError, chroot_mounts, copy_modules, copy_tree, disk_usage, empty_dir, ext4_size,
                    kernel_version, make_dirs, module_closure, read, set_shell_vars, tree_bytes, write)
from .sources import (DISK_SIZE, FILES, L1_CACHED, L1_ENABLED, L1_GENERATORS_OFF, L1_GRUB, L1_GRUB_D_OFF, L1_MASKED,
                      L1_PACKAGES, L1_REPO, L1_STRIP, L2_CMDLINE, L2_INITRD_IN_L1, L2_KERNEL_IN_L1, L2_MODULES,
                      L2_MODULES_LATER, L2_PACKAGES,
                      L2_ROOT_IN_L1, SBIN_PATH, STRIP, SUITE, debian_sources)


class Shell:
    """L0's command interface for one build: each command logged, progress lines timed."""

    def __init__(self, l0: Guest, log, progress):
        self.l0, self.log, self.progress = l0, log, progress
        self.start = time.monotonic()

    def say(self, msg: str) -> None:
        self.progress(f"[{time.monotonic() - self.start:6.1f}s] {msg}")

    def sh(self, *cmd, input: str | None = None, timeout: float = 3600) -> str:
        """Run a command on L0, log its output, raise LabImageError if it fails."""
        cmd = [str(c) for c in cmd]
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        r = self.l0.run(cmd, input=input, timeout=timeout)
        self.log.write(r.out + r.err)
        self.log.flush()
        if r.rc:
            last = ((r.err or r.out).strip().splitlines() or ["no output"])[-1]
            raise LabImageError(f"{cmd[0]} failed (exit {r.rc}): {last} [log: {self.log.name}]")
        return r.out

    def chroot(self, root: Path, *cmd) -> str:
        return self.sh("env", "-i", f"PATH={SBIN_PATH}", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
                       "chroot", root, *cmd)


class Build:
    """One build in a temp dir under the cache dir; run() returns the output folder. Its jobs, in
    order: the disk, the two mmdebstrap roots, L2's image inside L1, L1's repo, files and grub."""

    def __init__(self, work: Path, log, progress, l0: Guest | None = None):
        self.work = work
        # the build runs on L0: its commands go through L0's interface
        self.shell = Shell(l0 or Local(), log, progress)
        self.sources = debian_sources(self.shell.l0)

    def run(self, recipe: str) -> Path:
        shell, out = self.shell, self.work / "out"
        out.mkdir()
        disk = out / "l1.raw"
        with contextlib.ExitStack() as stack:
            loop, part = make_disk(shell, disk, stack)
            uuid = shell.sh("blkid", "-s", "UUID", "-o", "value", part).strip()
            root = self.work / "l1root"
            root.mkdir()
            shell.sh("mount", part, root)
            stack.callback(shell.sh, "umount", root)
            l2root = self.work / "l2root"
            debootstrap(shell, self.work, root, l2root, self.sources)
            kver = kernel_version(root)
            make_l2(shell, self.work, out, root, l2root, kver)
            cached = make_repo(shell, root)
            host_pubkey = configure_l1(shell, root, uuid, out)
            with chroot_mounts(root, loop, part, uuid, shell.sh):
                finish_l1(shell, root, loop)
        shell.say(f"l1 disk ready: {disk_usage(disk)}")
        images = LabImages(
            l1_disk=disk, ssh_key=out / "lab_key", ssh_host_pubkey=host_pubkey, recipe=recipe,
            l2_root_in_l1=L2_ROOT_IN_L1, l2_kernel_in_l1=L2_KERNEL_IN_L1,
            l2_initrd_in_l1=L2_INITRD_IN_L1, l2_cmdline=L2_CMDLINE,
            virt_packages_cached=cached)
        save_manifest(out, images)
        return out


# -- disk

def make_disk(shell: Shell, disk: Path, stack) -> tuple[str, str]:
    """Sparse raw disk, msdos label, one ext4 partition; returns (loop, partition)."""
    shell.say(f"creating {DISK_SIZE // 2**30} GiB raw disk")
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    os.chmod(disk, 0o644)
    shell.sh("parted", "-s", disk, "mklabel", "msdos", "mkpart", "primary", "ext4",
             "1MiB", "100%", "set", "1", "boot", "on")
    loop = shell.sh("losetup", "-P", "--find", "--show", disk).strip()
    stack.callback(shell.sh, "losetup", "-d", loop)
    shell.sh("partprobe", loop)  # without it /dev/loopNp1 may never appear
    part = loop + "p1"
    for _ in range(100):
        if Path(part).exists():
            break
        time.sleep(0.1)
    else:
        raise LabImageError(f"{part} did not appear after partprobe {loop}")
    shell.sh("mkfs.ext4", "-q", "-L", "l1root", "-i", "32768",
             "-E", "lazy_itable_init=0,lazy_journal_init=0", part)
    return loop, part


# -- mmdebstrap

def mmdebstrap_jobs(l1root: Path, l2root: Path, sources: list[str]) -> dict[str, list]:
    """The two mmdebstrap command lines, L1's and L2's."""
    # no fsync per unpacked file: the roots are scratch until the build ends (unmounting L1's
    # root flushes it); mmdebstrap's eatmydata hook would need dpkg-dev on L0
    strip = ["--dpkgopt=force-unsafe-io", *(f"--dpkgopt=path-exclude={p}" for p in STRIP)]
    repo_hook = (
        'export APT_CONFIG="$MMDEBSTRAP_APT_CONFIG"; apt-get clean && '
        f'apt-get install --download-only -y -o APT::Install-Recommends=false {" ".join(L1_CACHED)} && '
        f'mkdir -p "$1{L1_REPO}" && mv "$1"/var/cache/apt/archives/*.deb "$1{L1_REPO}/"')
    early_hook = f'cp -R "{FILES / "l1-early"}"/. "$1"/'  # before the kernel's initramfs
    return {
        "l1": ["mmdebstrap", "--mode=root", "--variant=minbase",
               "--include=" + ",".join(L1_PACKAGES), *strip,
               *(f"--dpkgopt=path-exclude={p}" for p in L1_STRIP), f"--essential-hook={early_hook}",
               f"--customize-hook={repo_hook}", SUITE, l1root, *sources],
        "l2": ["mmdebstrap", "--mode=root", "--variant=minbase",
               "--include=" + ",".join(L2_PACKAGES), *strip, SUITE, l2root, *sources],
    }


def debootstrap(shell: Shell, work: Path, l1root: Path, l2root: Path, sources: list[str]) -> None:
    """Run mmdebstrap for L1 and L2 side by side (dpkg is mostly single-threaded)."""
    jobs = mmdebstrap_jobs(l1root, l2root, sources)
    shell.say("mmdebstrap: L1 and L2 root filesystems, in parallel")
    logs = {name: work / f"mmdebstrap-{name}.log" for name in jobs}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(shell.l0.run, f"{shlex.join(str(c) for c in cmd)} "
                                                   f"> {shlex.quote(str(logs[name]))} 2>&1", timeout=7200)
                   for name, cmd in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, r in results.items():
        job_done(shell, name, r.rc, logs[name])


def job_done(shell: Shell, name: str, rc: int, log: Path) -> None:
    """Copy a finished mmdebstrap's log into the build log; raise if it failed."""
    text = read(log)
    shell.log.write(f"$ mmdebstrap ({name})\n{text}")
    if rc:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise LabImageError(f"mmdebstrap {name} failed (exit {rc}): {last} [log: {shell.log.name}]")
    shell.say(f"mmdebstrap {name} done")


# -- L2

def make_l2(shell: Shell, work: Path, out: Path, l1root: Path, l2root: Path, kver: str) -> None:
    """Finish the L2 root, then put its image, kernel and initrd inside L1."""
    shell.say("L2: modules, init, ext4 image, initramfs")
    moddir = l1root / "lib/modules" / kver
    finish_l2_root(shell, moddir, l2root, kver)
    image = l1root / L2_ROOT_IN_L1.lstrip("/")
    image.parent.mkdir(parents=True, exist_ok=True)
    size = ext4_size(tree_bytes(l2root))
    shell.sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", "l2root", "-d", l2root,
             "-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
             image, f"{size // 1024}k")
    kernel = l1root / L2_KERNEL_IN_L1.lstrip("/")
    kernel.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(l1root / "boot" / f"vmlinuz-{kver}", kernel)
    make_initrd(shell, work / "l2initrd", l2root, moddir, l1root / L2_INITRD_IN_L1.lstrip("/"))
    write(out / "l2-root.size", disk_usage(image) + "\n")
    shell.say(f"l2 root image: {disk_usage(image)}")


def finish_l2_root(shell: Shell, moddir: Path, l2root: Path, kver: str) -> None:
    """L2's modules (L1's, only those L2 loads), its init and files, no apt or log leftovers."""
    copy_modules(moddir, l2root / "lib/modules" / kver,
                 module_closure(moddir, L2_MODULES + L2_MODULES_LATER))
    shell.sh("depmod", "-b", l2root, kver)
    copy_tree(FILES / "l2", l2root)
    write(l2root / "etc/l2-modules", "\n".join(L2_MODULES) + "\n")
    write(l2root / "etc/l2-modules-later", "\n".join(L2_MODULES_LATER) + "\n")
    write(l2root / "etc/hostname", "l2\n")
    write(l2root / "etc/hosts", "127.0.0.1 localhost\n127.0.1.1 l2\n")
    write(l2root / "etc/fstab", "/dev/vda / ext4 defaults 0 0\n")
    write(l2root / "etc/resolv.conf", "")
    (l2root / "etc/mtab").unlink(missing_ok=True)
    os.symlink("../proc/self/mounts", l2root / "etc/mtab")
    for junk in ["var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log"]:
        empty_dir(l2root / junk)


def make_initrd(shell: Shell, tree: Path, l2root: Path, moddir: Path, dest: Path) -> None:
    """busybox + L2_MODULES + image_files/l2-initrd/init, gzipped newc cpio, built in ``tree``."""
    order = module_closure(moddir, L2_MODULES)
    copy_modules(moddir, tree / "lib/modules", order)
    write(tree / "etc/modules", "\n".join(order) + "\n")
    (tree / "bin").mkdir()
    shutil.copy2(l2root / "bin/busybox", tree / "bin/busybox")
    copy_tree(FILES / "l2-initrd", tree)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shell.sh("sh", "-c", f"cd {shlex.quote(str(tree))} && cpio -o -H newc -R 0:0 --quiet | gzip -6 -n "
                         f"> {shlex.quote(str(dest))}", input="\n".join(names) + "\n")


# -- L1

def make_repo(shell: Shell, root: Path) -> list[str]:
    """Index the .debs the customize hook left in L1_REPO; return their package names."""
    repo = root / L1_REPO.lstrip("/")
    stanzas, names = [], []
    for deb in sorted(repo.glob("*.deb")):
        control = shell.sh("dpkg-deb", "-f", deb).rstrip("\n")
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
    shell.say(f"L1 local apt repo: {' '.join(names)}")
    return names


def configure_l1(shell: Shell, root: Path, uuid: str, out: Path) -> str:
    """Files of the fresh L1: identity, fstab, ssh keys, grub defaults. Returns the host key."""
    shell.say("L1: configuration, ssh keys")
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
    shell.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@l1", "-f", hostkey)
    shell.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nested-nvme-lab",
             "-f", out / "lab_key")
    os.chmod(out / "lab_key", 0o600)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    write(ssh_dir / "authorized_keys", (out / "lab_key.pub").read_text(), 0o600)
    return " ".join(Path(f"{hostkey}.pub").read_text().split()[:2])


def finish_l1(shell: Shell, root: Path, loop: str) -> None:
    """In a chroot: units, offline apt index, grub-install, update-grub."""
    shell.say("L1: systemd units, apt index, grub")
    shell.chroot(root, "systemctl", "mask", *L1_MASKED)
    shell.chroot(root, "systemctl", "enable", *L1_ENABLED)
    generators = root / "etc/systemd/system-generators"
    make_dirs(generators)
    for name in L1_GENERATORS_OFF:  # a link to /dev/null masks a generator
        (generators / name).unlink(missing_ok=True)
        (generators / name).symlink_to("/dev/null")
    for script in L1_GRUB_D_OFF:
        (root / "etc/grub.d" / script).chmod(0o644)
    # libvirtd starts on its socket when first used; not at boot
    (root / "etc/systemd/system/multi-user.target.wants/libvirtd.service").unlink(missing_ok=True)
    shell.chroot(root, "apt-get", "update")
    shell.chroot(root, "grub-install", "--target=i386-pc", loop)
    shell.chroot(root, "update-grub")
    cfg = (root / "boot/grub/grub.cfg").read_text()
    if "root=UUID=" not in cfg:
        raise LabImageError("update-grub did not write root=UUID= into grub.cfg")
