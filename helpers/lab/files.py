"""File helpers of the lab image build, run on L0 by the build itself (trees,
modules, small config files, sizes). No command runs here except the chroot
mounts, which take the build's own ``sh``."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


class LabImageError(Exception):
    """A build problem with a one-line explanation for the user."""


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


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
            with contextlib.suppress(LabImageError):
                sh("umount", where)


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
