"""A real shell on a fake root, for unit tests of what distribution classes and steps run:
``Sandbox`` runs /bin/sh in a private mount namespace (``unshare -m``, as root) where a
folder's etc, boot and var stand in for /etc, /boot and /var (and a file for /proc/cmdline),
and PATH holds only basic tools and the fake tools asked for, each of which logs its call."""
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.guest import Guest, Result

BASIC = ("cat", "cp", "test", "mkdir", "sed", "grep", "uname", "ls", "rm", "readlink", "printf", "dpkg-query")
FAKE_TOOLS = {
    # grubby keeps its entries in /var/lib/grubby-info (the fixture's `grubby --info=ALL`)
    "grubby": r'''case "$1" in
  --info=ALL) cat /var/lib/grubby-info ;;
  --update-kernel) for a in $4; do
      sed -i "/[ \"]$a[ \"]/!s|^args=\"\(.*\)\"|args=\"\1 $a\"|" /var/lib/grubby-info; done ;;
  *) exit 2 ;;
esac''',
    # update-grub and grub2-mkconfig write the entry from /etc/default/grub, as the real ones do
    "update-grub": '. /etc/default/grub; mkdir -p /boot/grub; '
                   'echo "linux /vmlinuz $GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT" > /boot/grub/grub.cfg',
    "grub2-mkconfig": '. /etc/default/grub; test "$1 $2" = "-o /boot/grub2/grub.cfg" || exit 2; mkdir -p /boot/grub2; '
                      'echo "linux /vmlinuz $GRUB_CMDLINE_LINUX" > /boot/grub2/grub.cfg',
    "kernel-install": 'test "$1" = add || exit 2; mkdir -p /boot/loader; '
                      'echo "options $(cat /etc/kernel/cmdline)" > /boot/loader/entry.conf',
    "apt-get": "exit 0", "dnf": "exit 0", "yum": "exit 0",
    "virsh": 'echo "Compiled against library: libvirt 9.0.0"', "systemctl": "exit 0", "reboot": "exit 0",
}


class Sandbox(Guest):
    """A real /bin/sh in a private mount namespace where ``root``'s etc, boot and var stand in for
    /etc, /boot and /var, and PATH holds only basic tools and the fakes asked for (each logs its call)."""

    def __init__(self, root: Path, files: dict[str, str], tools=(), cmdline: str | None = None, name="sandbox"):
        self.root, self.name, self.cmdline = root, name, cmdline
        for d in ("etc", "boot", "var/lib", "bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for rel, text in files.items():
            p = root / rel.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        for tool in BASIC:
            real = shutil.which(tool)
            if real:
                (root / "bin" / tool).symlink_to(real)
        if cmdline is not None:
            (root / "cmdline").write_text(cmdline)
        for tool in tools:
            p = root / "bin" / tool
            p.write_text(f'#!/bin/sh\necho "{tool} $*" >> /var/lib/calls\n{FAKE_TOOLS[tool]}\n')
            p.chmod(0o755)

    def _run(self, cmd, timeout, input):
        r = self.root
        setup = (f"mount --bind {r}/etc /etc && mount --bind {r}/boot /boot && mount --bind {r}/var /var "
                 + (f"&& mount --bind {r}/cmdline /proc/cmdline " if self.cmdline is not None else "")
                 + f"&& PATH={r}/bin && export PATH && exec /bin/sh -c \"$1\"")
        p = subprocess.run(["unshare", "-m", "/bin/sh", "-c", setup, "sh", cmd], capture_output=True, text=True,
                           input=input, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)

    def calls(self) -> list[str]:
        f = self.root / "var/lib/calls"
        return f.read_text().splitlines() if f.exists() else []

    def file(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(),
                                   reason="`unshare -m` (a private mount namespace) needs root: the sandbox "
                                          "binds fake /etc and /boot there")
