"""The lab images' cache on L0 and its lock: finding the images of the current
recipe (read through L0's command interface, from any machine), and, inside the
build that runs on L0, the lock, the checks before a build, what a killed build
left, and moving a finished build into place."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..guest import Guest, Local
from .files import LabImageError, make_dirs, read
from .sources import HOST_TOOLS, MIN_FREE, SBIN_PATH, SUITE, debian_sources


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


# ---------------------------------------------------------------- finding the images (any machine)

def load_images(l0: Guest, cache_dir: Path, recipe: str) -> LabImages | None:
    """The cached images of ``recipe`` on L0 if they and their files are there, else None."""
    images = read_manifest(l0, Path(cache_dir) / recipe)
    return images if images and images.recipe == recipe else None


def read_manifest(l0: Guest, folder: Path) -> LabImages | None:
    """The LabImages saved in folder/images.json on L0, if it and its files are there."""
    text = l0.read_text(str(folder / "images.json"))
    try:
        data = json.loads(text or "")
        images = LabImages(**{**data, "l1_disk": folder / data["l1_disk"],
                              "ssh_key": folder / data["ssh_key"]})
    except (ValueError, TypeError, KeyError):
        return None
    files = l0.run(["test", "-f", str(images.l1_disk), "-a", "-f", str(images.ssh_key)])
    return images if files.ok else None


# ---------------------------------------------------------------- inside the build, on L0

def save_manifest(folder: Path, images: LabImages) -> None:
    data = asdict(images)
    data["l1_disk"], data["ssh_key"] = images.l1_disk.name, images.ssh_key.name
    (folder / "images.json").write_text(json.dumps(data, indent=2) + "\n")


def install(out: Path, cache_dir: Path, recipe: str) -> LabImages:
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
    return read_manifest(Local(), final)


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
def locked(cache_dir: Path, progress=print, timeout: float = 1800):
    """One build at a time per cache (flock on cache_dir/.lock). Another build running
    (``make run``'s setup starts one in the background) is waited for, with a line every
    30 s, up to ``timeout``: the caller then finds its images in the cache."""
    with open(cache_dir / ".lock", "w") as lock:
        t0 = time.monotonic()
        said = None
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - t0
                if waited > timeout:
                    raise LabImageError(f"another image build in {cache_dir} still runs after {timeout:.0f} s: "
                                        f"see {cache_dir / 'build.log'}; stop it or wait, then try again") from None
                if said is None or waited - said >= 30:
                    progress(f"another image build is running in {cache_dir}: waiting for it ({waited:.0f} s)")
                    said = waited
                time.sleep(1)
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


def release_mounts(work: Path, l0: Guest | None = None) -> None:
    """Unmount everything under work and detach loop devices backed by files in it."""
    l0 = l0 or Local()
    prefix = str(work.resolve()) + "/"
    targets = [line.split()[1] for line in read(Path("/proc/mounts")).splitlines()]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        l0.run(["umount", "-l", target])
    out = l0.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"]).out
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(prefix):
            l0.run(["losetup", "-d", parts[0]])
