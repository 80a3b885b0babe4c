"""The lab's guest images, built on L0 from Debian packages and cached there.

One raw, GRUB-bootable Debian disk for L1 (the golden image). Inside it sits
what L2 needs: a small ext4 root image, L1's own kernel and a tiny busybox
initramfs. Built with mmdebstrap, cached outside the repo, rebuilt only when
the recipe (package lists, the build's code, the files under image_files/, L0's
apt sources) changes. By job:

- ``sources``: the recipe and L0's apt sources;
- ``cache``: finding the images of the current recipe, the lock, a build's place;
- ``build``: the build itself (its commands through L0's command interface);
- ``files``: file helpers of the build.

``ensure_images(l0)`` is what stage 02 calls, with L0's command interface: the
cache is read through it, and a build runs on L0 through it (on a remote L0, this
package's lab code is copied there and run with L0's python3).

    python -m helpers.lab.images [--force] [--cache-dir DIR] [--print-recipe]
"""
from __future__ import annotations

import argparse
import base64
import io
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ..guest import Guest, Local
from .build import Build
from .cache import LabImages, install, load_images, locked, preflight, release_mounts, remove_stale_builds
from .files import LabImageError, disk_usage, module_closure  # noqa: F401  (the names tests and callers use)
from .sources import L2_CMDLINE, L2_INITRD_IN_L1, L2_KERNEL_IN_L1, L2_ROOT_IN_L1, recipe_hash  # noqa: F401

CACHE_DIR = Path("/var/cache/nested-nvme/images")
PACKAGE = Path(__file__).resolve().parent.parent  # helpers/


def build_images(cache_dir: Path | None = None, force: bool = False, progress=print) -> LabImages:
    """On L0 itself: build the images into cache_dir unless the cached ones match the recipe."""
    l0 = Local()
    cache_dir = Path(cache_dir or CACHE_DIR)
    recipe = recipe_hash(l0)
    images = None if force else load_images(l0, cache_dir, recipe)
    if images:
        progress(f"images up to date (recipe {recipe})")
        return images
    preflight(cache_dir)
    with locked(cache_dir, progress):
        if not force and (images := load_images(l0, cache_dir, recipe)):  # built while this waited
            progress(f"images up to date (recipe {recipe}), built by the other build")
            return images
        remove_stale_builds(cache_dir)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache_dir))
        try:
            with open(cache_dir / "build.log", "w") as log:
                out = Build(work, log, progress, l0).run(recipe)
            images = install(out, cache_dir, recipe)
        finally:
            release_mounts(work, l0)
            shutil.rmtree(work, ignore_errors=True)
    progress(f"images built (recipe {recipe}) in {cache_dir / recipe}")
    return images


def ensure_images(l0: Guest, cache_dir: Path | None = None, force: bool = False, progress=print) -> LabImages:
    """The lab images on L0, found in its cache or built there, through L0's command
    interface. This machine being L0 builds in this process; a remote L0 gets this
    package's lab code and runs the same build with its own python3."""
    cache_dir = Path(cache_dir or CACHE_DIR)
    if isinstance(l0, Local):
        return build_images(cache_dir, force, progress)
    recipe = recipe_hash(l0)
    images = None if force else load_images(l0, cache_dir, recipe)
    if images:
        progress(f"images up to date on L0 (recipe {recipe})")
        return images
    progress(f"building the lab images on L0 (recipe {recipe}); this takes a few minutes")
    r = run_remote(l0, ["--cache-dir", str(cache_dir)] + (["--force"] if force else []), timeout=7200)
    for line in r.out.splitlines():  # the build's own progress lines, as it printed them on L0
        progress(f"  L0: {line}")
    if not r.ok:
        said = (r.err or r.out).strip().splitlines()
        raise LabImageError(f"the build on L0 failed: {said[-1] if said else f'exit code {r.rc}'} "
                            f"[log on L0: {cache_dir / 'build.log'}]")
    images = load_images(l0, cache_dir, recipe)
    if images is None:
        raise LabImageError(f"the build on L0 ended but {cache_dir / recipe} holds no images of recipe {recipe}")
    return images


def bundle() -> str:
    """This package's lab code (and what it imports) as a base64 tar.gz, to run on L0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in ("__init__.py", "errors.py", "guest.py"):
            tar.add(PACKAGE / rel, arcname=f"helpers/{rel}")
        lab = PACKAGE / "lab"
        for path in sorted(lab.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                tar.add(path, arcname=f"helpers/lab/{path.relative_to(lab)}")
    return base64.b64encode(buf.getvalue()).decode()


def run_remote(l0: Guest, args: list[str], timeout: float = 7200):
    """Run ``python3 -m helpers.lab.images ARGS`` on L0 from a copy of this code in a
    temp folder there (removed afterwards)."""
    cmd = ("d=$(mktemp -d /tmp/nested-nvme-lab.XXXXXX) || exit 1; echo \"lab code copied to $d\" >&2; "
           "base64 -d | tar -xz -C \"$d\" && (cd \"$d\" && python3 -m helpers.lab.images " + shlex.join(args) +
           "); rc=$?; rm -rf \"$d\"; exit $rc")
    return l0.run(cmd, input=bundle(), timeout=timeout)


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.lab.images",
                                     description="Build the lab's L1/L2 guest images.")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--print-recipe", action="store_true", help="print this machine's recipe hash and exit")
    args = parser.parse_args(argv)
    if args.print_recipe:
        print(recipe_hash(Local()))
        return 0
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
