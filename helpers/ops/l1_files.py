"""Stage 02's files on L0, as plan and apply: each ``plan_*`` reads only and returns a
``FileOp`` (the Action a plan shows, or no change with the reason); ``apply_op`` carries out
exactly that op. The commands shown are ``helpers.by_hand``'s, for the same paths."""
from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .. import by_hand
from ..errors import RunbookError
from ..state import State
from ..steps import Action
from . import Change, did, no_change
from .l1 import QEMU_USER, known_hosts_line, no_space, overlay_backing


@dataclass
class FileOp:
    what: str                      # the Change's name: "NVMe backing file /var/lib/.../nvme.raw"
    action: Action | None          # None: no change
    detail: str                    # why no change, or what apply does
    kind: str = ""                 # what apply does: mkdir, backing, chown, overlay, known_hosts, key
    args: tuple = ()


def _qemu_owner() -> tuple[int, int] | None:
    try:
        u = pwd.getpwnam(QEMU_USER)
    except KeyError:
        return None
    return u.pw_uid, u.pw_gid


def _needs_giving(path: Path) -> bool:
    """Is ``path`` (existing) not yet usable by QEMU's user (owner, or a folder above not traversable)?"""
    owner = _qemu_owner()
    if owner is None:
        return False
    st = path.stat()
    if (st.st_uid, st.st_gid) != owner:
        return True
    return any(not parent.stat().st_mode & 0o001 for parent in path.parents if parent != Path("/"))


def plan_workdir(workdir: Path) -> FileOp:
    what = f"workdir {workdir}"
    if workdir.is_dir():
        return FileOp(what, None, "exists")
    return FileOp(what, Action("L0", f"create the folder {workdir}", by_hand.mkdir(workdir)), "created",
                  "mkdir", (workdir,))


def plan_backing_file(path: Path, size_gib: float) -> FileOp:
    """The NVMe's raw backing file: created sparse at the size asked, never overwritten."""
    what = f"NVMe backing file {path}"
    size = int(size_gib * 1024 ** 3)
    if path.exists():
        have = path.stat().st_size
        note = "" if have == size else f" (its size is {have / 1024 ** 3:.2f} GiB, not the {size_gib} GiB asked; left as it is)"
        if _needs_giving(path):
            return FileOp(what, Action("L0", f"give {path} to QEMU's user {QEMU_USER}",
                                       by_hand.backing_file(path, size_gib, create=False)),
                          "exists, kept; given to QEMU's user" + note, "chown", (path,))
        return FileOp(what, None, "exists, kept" + note)
    return FileOp(what, Action("L0", f"create {path} (raw, sparse, {size_gib} GiB), owned by {QEMU_USER}",
                               by_hand.backing_file(path, size_gib)),
                  f"created raw, sparse, {size_gib} GiB", "backing", (path, size))


def plan_overlay(golden: Path, overlay: Path, running: bool = False) -> FileOp:
    """L1's system disk in the lab: a qcow2 overlay on the cached golden image.
    An overlay on an older image (the recipe changed) is made anew unless L1 runs on it."""
    what = f"L1 disk {overlay}"
    replace = False
    if overlay.exists():
        backing = overlay_backing(overlay)
        if backing == str(golden):
            return FileOp(what, None, f"overlay on {golden.name} exists")
        if running:
            return FileOp(what, None, f"L1 runs on an older image ({backing}); teardown and rerun to use the new one")
        replace = True
    verb = f"replace {overlay} (it is on an older image)" if replace else f"create {overlay}"
    return FileOp(what, Action("L0", f"{verb}: qcow2 overlay on {golden}",
                               ([f"rm {by_hand.q(overlay)}"] if replace else []) + by_hand.overlay(golden, overlay)),
                  f"qcow2 overlay on {golden}", "overlay", (golden, overlay, replace))


def plan_known_hosts(path: Path, host: str, port: int, pubkey: str) -> FileOp:
    """Pin L1's host key (the one baked into the lab image)."""
    line = known_hosts_line(host, port, pubkey)
    what = f"known_hosts {path}"
    if path.exists() and path.read_text() == line + "\n":
        return FileOp(what, None, "pins L1's host key already")
    key = " ".join(pubkey.split()[:2])
    return FileOp(what, Action("L0", f"write {path}: pin L1's host key", by_hand.known_hosts(path, line), line + "\n"),
                  f"pins {key[:40]}...", "known_hosts", (path, line + "\n"))


def plan_key(src: Path, dest: Path) -> FileOp:
    """The run keeps its own copy of the lab's SSH key (mode 0600), so a rebuilt
    image cache never locks the runbook out of a running L1."""
    what = f"SSH key {dest}"
    if dest.exists() and dest.read_bytes() == src.read_bytes():
        return FileOp(what, None, "the lab key is in place")
    return FileOp(what, Action("L0", f"copy the lab's SSH key to {dest} (mode 0600)", by_hand.install_key(src, dest)),
                  f"copied from {src.parent}", "key", (src, dest))


def give_to_qemu(path: Path) -> None:
    """libvirt does not relabel files named only in <qemu:commandline>: let QEMU's user use it."""
    owner = _qemu_owner()
    if owner is None:
        return
    os.chown(path, *owner)
    for parent in path.parents:  # each folder above must be traversable
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def apply_op(op: FileOp, state: State) -> Change:
    """Carry out ``op`` as planned (no change when it has no action)."""
    if op.action is None:
        return no_change(op.what, op.detail)
    if op.kind == "mkdir":
        (workdir,) = op.args
        workdir.mkdir(parents=True, mode=0o755)
        state.remember_created("dirs", str(workdir))
    elif op.kind == "backing":
        path, size = op.args
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "wb") as f:
                f.truncate(size)
        except OSError as e:
            raise no_space(path, e) from None
        give_to_qemu(path)
        state.remember_created("files", str(path))
    elif op.kind == "chown":
        give_to_qemu(op.args[0])
    elif op.kind == "overlay":
        import subprocess
        golden, overlay, replace = op.args
        if replace:
            overlay.unlink()
        r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(golden), str(overlay)],
                           capture_output=True, text=True)
        if r.returncode:
            if "No space left" in r.stderr:
                raise no_space(overlay, OSError(28, "No space left on device"))
            raise RunbookError(f"qemu-img could not create {overlay}: {r.stderr.strip()}",
                               hint="check free space and that qemu-utils is installed")
        state.remember_created("files", str(overlay))
    elif op.kind == "known_hosts":
        path, text = op.args
        path.write_text(text)
        state.remember_created("files", str(path))
    elif op.kind == "key":
        src, dest = op.args
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(src.read_bytes())
        dest.chmod(0o600)
        state.remember_created("files", str(dest))
    else:  # pragma: no cover - a plan_* above made it
        raise ValueError(op.kind)
    return did(op.what, op.detail)
