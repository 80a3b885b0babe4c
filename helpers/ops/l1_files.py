"""Stage 02's files on L0, as plan and apply: each ``plan_*`` reads only (through the
machine's command interface, so a remote L0 is read over SSH) and returns a ``FileOp``
(the Action a plan shows, or no change with the reason); ``apply_op`` carries out exactly
that op on the same machine. The commands shown are ``helpers.by_hand``'s, for the same paths."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import by_hand, execute
from ..errors import RunbookError
from ..guest import Guest
from ..state import State
from ..steps import Action
from . import Change, did, no_change
from .l1 import QEMU_USER, known_hosts_line, no_space, overlay_backing


@dataclass
class FileOp:
    what: str                      # the Change's name: "NVMe backing file /var/lib/.../nvme.raw"
    action: Action | None          # None: no change
    detail: str                    # why no change, or what apply does
    kind: str = ""                 # what apply does: mkdir, backing, chown, overlay, known_hosts, key, fetch_key
    args: tuple = ()
    machine: Guest | None = None   # where apply does it
    record: bool = True            # remember what it made in the run state (teardown removes it)


# QEMU's user must be able to use a file named only in <qemu:commandline> (libvirt does not
# relabel those): owned by it, and each folder above traversable by others.
def give_to_qemu(m: Guest, path: Path, exists: bool = True) -> list[str]:
    """The commands that let QEMU's user use ``path`` (read only): ``chown`` when that user
    exists and does not own it, ``chmod o+x`` on each folder above that others cannot enter."""
    cmds = []
    if m.read(["id", "-u", QEMU_USER]).ok and (
            not exists or m.read(["stat", "-c", "%U:%G", str(path)]).out.strip() != f"{QEMU_USER}:{QEMU_USER}"):
        cmds.append(f"chown {QEMU_USER}:{QEMU_USER} {by_hand.q(path)}   # QEMU runs as {QEMU_USER}")
    for d in reversed(path.parents[:-1]):
        mode = m.read(["stat", "-c", "%A", str(d)])
        if mode.ok and mode.out.strip()[-1:] not in ("x", "t"):
            cmds.append(f"chmod o+x {by_hand.q(d)}   # QEMU's user must pass through it")
    return cmds


def plan_workdir(m: Guest, workdir: Path) -> FileOp:
    what = f"workdir {workdir}"
    if m.is_dir(str(workdir)):
        return FileOp(what, None, "exists")
    return FileOp(what, Action("L0", f"create the folder {workdir}", by_hand.mkdir(workdir)), "created",
                  "mkdir", (workdir,), m)


def plan_backing_file(m: Guest, path: Path, size_gib: float, workdir: Path | None = None) -> FileOp:
    """The NVMe's raw backing file: created sparse at the size asked, never overwritten."""
    what = f"NVMe backing file {path}"
    size = int(size_gib * 1024 ** 3)
    have = m.size(str(path))
    if have is not None:
        note = "" if have == size else f" (its size is {have / 1024 ** 3:.2f} GiB, not the {size_gib} GiB asked; left as it is)"
        if give := give_to_qemu(m, path):
            return FileOp(what, Action("L0", f"give {path} to QEMU's user {QEMU_USER}", give),
                          "exists, kept; given to QEMU's user" + note, "chown", (path,), m)
        return FileOp(what, None, "exists, kept" + note)
    folder = [] if path.parent == workdir or m.is_dir(str(path.parent)) else by_hand.mkdir(path.parent)
    return FileOp(what, Action("L0", f"create {path} (raw, sparse, {size_gib} GiB), owned by {QEMU_USER}",
                               folder + by_hand.backing_file(path, size_gib) + give_to_qemu(m, path, exists=False)),
                  f"created raw, sparse, {size_gib} GiB", "backing", (path, size), m)


def plan_overlay(m: Guest, golden: Path, overlay: Path, running: bool = False) -> FileOp:
    """L1's system disk in the lab: a qcow2 overlay on the cached golden image.
    An overlay on an older image (the recipe changed) is made anew unless L1 runs on it."""
    what = f"L1 disk {overlay}"
    replace = False
    if m.exists(str(overlay)):
        backing = overlay_backing(m, overlay)
        if backing == str(golden):
            return FileOp(what, None, f"overlay on {golden.name} exists")
        if running:
            return FileOp(what, None, f"L1 runs on an older image ({backing}); teardown and rerun to use the new one")
        replace = True
    verb = f"replace {overlay} (it is on an older image)" if replace else f"create {overlay}"
    return FileOp(what, Action("L0", f"{verb}: qcow2 overlay on {golden}",
                               ([f"rm -f {by_hand.q(overlay)}"] if replace else []) + by_hand.overlay(golden, overlay)),
                  f"qcow2 overlay on {golden}", "overlay", (golden, overlay, replace), m)


def plan_known_hosts(m: Guest, path: Path, host: str, port: int, pubkey: str, where: str = "L0") -> FileOp:
    """Pin L1's host key (the one baked into the lab image) in ``path`` on ``m``."""
    line = known_hosts_line(host, port, pubkey)
    what = f"known_hosts {path}" + ("" if where == "L0" else f" ({where})")
    if m.read_text(str(path)) == line + "\n":
        return FileOp(what, None, "pins L1's host key already")
    key = " ".join(pubkey.split()[:2])
    folder = [] if m.is_dir(str(path.parent)) else [f"mkdir -p -m 700 {by_hand.q(path.parent)}"]
    return FileOp(what, Action(where, f"write {path}: pin L1's host key", folder + by_hand.known_hosts(path, line),
                               line + "\n"),
                  f"pins {key[:40]}...", "known_hosts", (path, line + "\n"), m, record=where == "L0")


def plan_key(m: Guest, src: Path, dest: Path) -> FileOp:
    """The run keeps its own copy of the lab's SSH key on L0 (mode 0600), so a rebuilt
    image cache never locks the runbook out of a running L1."""
    what = f"SSH key {dest}"
    if m.read(["cmp", "-s", str(src), str(dest)]).ok:
        return FileOp(what, None, "the lab key is in place")
    return FileOp(what, Action("L0", f"copy the lab's SSH key to {dest} (mode 0600)", by_hand.install_key(src, dest)),
                  f"copied from {src.parent}", "key", (src, dest), m)


def plan_fetch_key(m: Guest, src: Path, dest: Path) -> FileOp:
    """A remote L0: this machine's copy of the lab's SSH key into L1 (mode 0600, in a 0700
    folder), read from L0 through its command interface; the ssh client into L1 runs here."""
    what = f"SSH key {dest} (this machine)"
    text = m.read_text(str(src))
    if text is None:
        raise RunbookError(f"cannot read the lab's SSH key {src} on L0",
                           hint="rebuild the lab images (stage 02 does), then rerun stage 02")
    if dest.exists() and dest.read_text() == text:
        return FileOp(what, None, "the lab key is in place")
    return FileOp(what, Action("this machine", f"copy the lab's SSH key from L0's {src} to {dest} (mode 0600)",
                               [f"scp L0:{by_hand.q(src)} {by_hand.q(dest)} && chmod 600 {by_hand.q(dest)}"]),
                  f"read from {src} on L0", "fetch_key", (dest, text), record=False)


def apply_op(op: FileOp, state: State) -> Change:
    """Carry out ``op`` as planned: its Action's commands on its machine (no change when it has
    none); remember in the run state what it made (teardown removes it)."""
    if op.action is None:
        return no_change(op.what, op.detail)
    if op.kind == "fetch_key":  # this machine's own copy, read from a remote L0 (not a command here)
        _fetch_key(*op.args)
        return did(op.what, op.detail)
    made = {"backing": 0, "overlay": 1, "known_hosts": 0, "key": 1}.get(op.kind)
    made = op.args[made] if made is not None else None

    def failed(line: str, said: str) -> RunbookError:
        if made is not None and ("truncate" in line or "qemu-img" in line):
            if op.kind == "overlay" and "No space left" not in said:
                return RunbookError(f"qemu-img could not create {made}: {said}",
                                    hint="check free space and that qemu-utils is installed")
            return no_space(op.machine, made, said)
        return RunbookError(f"{op.action.machine}: `{line}` failed: {said[-300:]}",
                            hint="run it by hand to see why, fix that, then rerun stage 02")

    execute.run_on(op.machine, op.action, timeout=120, failed=failed)
    if op.kind == "mkdir":
        state.remember_created("dirs", str(op.args[0]))
    if made is not None and op.record:
        state.remember_created("files", str(made))
    return did(op.what, op.detail)


def _fetch_key(dest: Path, text: str) -> None:
    import os
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    dest.chmod(0o600)
