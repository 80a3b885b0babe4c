"""The lab image build's commands, in order, with a fake L0 that runs nothing: what a lab
run does for real (the two mmdebstraps, loop devices, chroots) is answered here with files."""
import contextlib
import io
import os
import re
import shlex
from pathlib import Path

from helpers.guest import Result
from helpers.lab import build
from helpers.lab.sources import L1_CACHED, L1_GRUB_D_OFF, L1_REPO, SUITE

KVER = "6.1.0-1-cloud-amd64"


class FakeL0:
    """Answers the build's commands as L0 would, with files under tmp; records each one."""

    def __init__(self, tmp: Path):
        self.tmp, self.ran = tmp, []

    def run(self, cmd, input=None, timeout=None):
        if isinstance(cmd, str):  # an mmdebstrap, in a thread: the two may come in either order
            return self.mmdebstrap(shlex.split(cmd))
        self.ran.append(list(cmd))
        return Result(0, self.answer(cmd), "")

    def answer(self, cmd) -> str:
        if cmd[0] == "losetup" and "--show" in cmd:
            (self.tmp / "loop0p1").touch()
            return f"{self.tmp / 'loop0'}\n"
        if cmd[0] == "blkid":
            return "1234-uuid\n"
        if cmd[0] == "dpkg-deb":
            return f"Package: {Path(cmd[-1]).name.split('_')[0]}\nVersion: 1\n"
        if cmd[0] == "ssh-keygen":
            key = Path(cmd[cmd.index("-f") + 1])
            key.write_text("private\n")
            Path(f"{key}.pub").write_text(f"ssh-ed25519 AAAA{key.name} {cmd[cmd.index('-C') + 1]}\n")
        if cmd[-1] == "update-grub":
            grub = Path(cmd[cmd.index("chroot") + 1]) / "boot/grub/grub.cfg"
            grub.parent.mkdir(parents=True, exist_ok=True)
            grub.write_text("linux /vmlinuz root=UUID=1234-uuid ro\n")
        return ""

    def mmdebstrap(self, argv) -> Result:
        log, root = Path(argv[argv.index(">") + 1]), Path(argv[argv.index(SUITE) + 1])
        self.ran.append(("mmdebstrap", root.name, tuple(argv[:argv.index(">")])))
        log.write_text(f"mmdebstrap into {root.name}\n")
        files = {"etc/mtab": "", "bin/busybox": "busybox", "root/.profile": "", "var/log/x": "", "etc/default/grub": "GRUB_TIMEOUT=5\n",
                 "etc/ssh/ssh_host_rsa_key": "", "etc/apt/sources.list.d/debian.sources": "",
                 f"boot/vmlinuz-{KVER}": "kernel", f"lib/modules/{KVER}/modules.dep": "",
                 **{f"{L1_REPO.lstrip('/')}/{name}_1_amd64.deb": name for name in L1_CACHED},
                 **{f"etc/grub.d/{name}": "#!/bin/sh\n" for name in L1_GRUB_D_OFF}}
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return Result(0, "", "")


def build_with_fake_l0(module, tmp: Path, monkeypatch):
    """Run ``module.Build`` against FakeL0; returns (commands, progress lines, manifest)."""
    monkeypatch.setattr(module, "debian_sources", lambda l0: ["deb http://deb.example/debian bookworm main"])
    monkeypatch.setattr(module, "module_closure", lambda moddir, names: ["virtio_blk", "ext4"])
    monkeypatch.setattr(module, "copy_modules", lambda moddir, dest, order: dest.mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(module, "chroot_mounts", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(module, "disk_usage", lambda path: "1.0M")
    monkeypatch.setattr(module, "DISK_SIZE", 2**20)
    l0, said = FakeL0(tmp), []
    work = tmp / "work"
    work.mkdir()
    out = module.Build(work, io.StringIO(), said.append, l0).run("recipe1")
    said = [re.sub(r"^\[ *[\d.]+s\] ", "", line) for line in said]
    return l0.ran, said, (out / "images.json").read_text()


def test_the_build_runs_its_jobs_in_order(tmp_path, monkeypatch):
    ran, said, manifest = build_with_fake_l0(build, tmp_path, monkeypatch)
    names = [c[0] if c[0] != "env" else f"chroot {c[c.index('chroot') + 2]}" for c in ran]
    assert names == ["parted", "losetup", "partprobe", "mkfs.ext4", "blkid", "mount",
                     "mmdebstrap", "mmdebstrap", "depmod", "mke2fs", "sh", "dpkg-deb",
                     "ssh-keygen", "ssh-keygen", "chroot systemctl", "chroot systemctl",
                     "chroot apt-get", "chroot grub-install", "chroot update-grub", "umount", "losetup"]
    assert ran[-1] == ["losetup", "-d", str(tmp_path / "loop0")]  # the loop device goes last
    assert sorted(c[1] for c in ran if c[0] == "mmdebstrap") == ["l1root", "l2root"]
    assert said[0] == "creating 0 GiB raw disk" and said[-1] == "l1 disk ready: 1.0M"
    assert "mmdebstrap: L1 and L2 root filesystems, in parallel" in said
    assert '"virt_packages_cached": [\n    "qemu-utils"' in manifest
    assert "ssh-ed25519 AAAAssh_host_ed25519_key" in manifest


def test_l1_masks_the_generators_it_has_no_use_for(tmp_path, monkeypatch):
    """Each generator L1 has nothing for is a link to /dev/null in /etc/systemd/system-generators
    (systemd runs every other one at each boot before it queues a unit); fstab's stays."""
    build_with_fake_l0(build, tmp_path, monkeypatch)
    masked = {p.name: os.readlink(p) for p in tmp_path.glob("work/**/etc/systemd/system-generators/*")}
    assert masked == {name: "/dev/null" for name in build.L1_GENERATORS_OFF}
    assert "systemd-sysv-generator" in masked and "systemd-fstab-generator" not in masked
