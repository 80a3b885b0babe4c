"""Stage 02's files on L0, as plan and apply: each ``plan_*`` reads only (through the
machine's command interface, so a remote L0 is read over SSH) and returns a ``FileOp``
(the Action a plan shows, or no change with the reason); ``apply_op`` carries out exactly
that op on the same machine. The commands shown are ``helpers.by_hand``'s, for the same paths."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import by_hand
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
# relabel those): owned by it, and each folder above traversable. One shell line on L0.
_NEEDS_GIVING = ('p={q}; if id -u {u} >/dev/null 2>&1; then [ "$(stat -c %U:%G "$p")" = {u}:{u} ] || exit 0; '
                 'fi; d=$(dirname "$p"); while [ "$d" != / ]; do case $(stat -c %A "$d") in *[xt]) ;; *) exit 0;; '
                 'esac; d=$(dirname "$d"); done; exit 1')
_GIVE = ('p={q}; if id -u {u} >/dev/null 2>&1; then chown {u}:{u} "$p"; fi; d=$(dirname "$p"); '
         'while [ "$d" != / ]; do case $(stat -c %A "$d") in *[xt]) ;; *) chmod o+x "$d";; esac; '
         'd=$(dirname "$d"); done')


def needs_giving(m: Guest, path: Path) -> bool:
    """Is ``path`` (existing) not yet usable by QEMU's user (owner, or a folder above not traversable)?"""
    return m.run(_NEEDS_GIVING.format(q=shlex.quote(str(path)), u=QEMU_USER)).rc == 0


def give_to_qemu(m: Guest, path: Path) -> None:
    m.run(_GIVE.format(q=shlex.quote(str(path)), u=QEMU_USER), check=True)


def plan_workdir(m: Guest, workdir: Path) -> FileOp:
    what = f"workdir {workdir}"
    if m.is_dir(str(workdir)):
        return FileOp(what, None, "exists")
    return FileOp(what, Action("L0", f"create the folder {workdir}", by_hand.mkdir(workdir)), "created",
                  "mkdir", (workdir,), m)


def plan_backing_file(m: Guest, path: Path, size_gib: float) -> FileOp:
    """The NVMe's raw backing file: created sparse at the size asked, never overwritten."""
    what = f"NVMe backing file {path}"
    size = int(size_gib * 1024 ** 3)
    have = m.size(str(path))
    if have is not None:
        note = "" if have == size else f" (its size is {have / 1024 ** 3:.2f} GiB, not the {size_gib} GiB asked; left as it is)"
        if needs_giving(m, path):
            return FileOp(what, Action("L0", f"give {path} to QEMU's user {QEMU_USER}",
                                       by_hand.backing_file(path, size_gib, create=False)),
                          "exists, kept; given to QEMU's user" + note, "chown", (path,), m)
        return FileOp(what, None, "exists, kept" + note)
    return FileOp(what, Action("L0", f"create {path} (raw, sparse, {size_gib} GiB), owned by {QEMU_USER}",
                               by_hand.backing_file(path, size_gib)),
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
                               ([f"rm {by_hand.q(overlay)}"] if replace else []) + by_hand.overlay(golden, overlay)),
                  f"qcow2 overlay on {golden}", "overlay", (golden, overlay, replace), m)


def plan_known_hosts(m: Guest, path: Path, host: str, port: int, pubkey: str, where: str = "L0") -> FileOp:
    """Pin L1's host key (the one baked into the lab image) in ``path`` on ``m``."""
    line = known_hosts_line(host, port, pubkey)
    what = f"known_hosts {path}" + ("" if where == "L0" else f" ({where})")
    if m.read_text(str(path)) == line + "\n":
        return FileOp(what, None, "pins L1's host key already")
    key = " ".join(pubkey.split()[:2])
    return FileOp(what, Action(where, f"write {path}: pin L1's host key", by_hand.known_hosts(path, line), line + "\n"),
                  f"pins {key[:40]}...", "known_hosts", (path, line + "\n"), m, record=where == "L0")


def plan_key(m: Guest, src: Path, dest: Path) -> FileOp:
    """The run keeps its own copy of the lab's SSH key on L0 (mode 0600), so a rebuilt
    image cache never locks the runbook out of a running L1."""
    what = f"SSH key {dest}"
    if m.run(["cmp", "-s", str(src), str(dest)]).ok:
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
    """Carry out ``op`` as planned (no change when it has no action)."""
    if op.action is None:
        return no_change(op.what, op.detail)
    m = op.machine
    made = None
    if op.kind == "mkdir":
        (workdir,) = op.args
        m.mkdir(str(workdir), 0o755)
        state.remember_created("dirs", str(workdir))
    elif op.kind == "backing":
        path, size = op.args
        q = shlex.quote(str(path))
        r = m.run(f"mkdir -p {shlex.quote(str(path.parent))} && truncate -s {size} {q}", timeout=120)
        if not r.ok:
            raise no_space(m, path, r.err or r.out) from None
        give_to_qemu(m, path)
        made = path
    elif op.kind == "chown":
        give_to_qemu(m, op.args[0])
    elif op.kind == "overlay":
        golden, overlay, replace = op.args
        if replace:
            m.remove(str(overlay))
        r = m.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(golden), str(overlay)],
                  timeout=120)
        if not r.ok:
            if "No space left" in r.err:
                raise no_space(m, overlay, "No space left on device")
            raise RunbookError(f"qemu-img could not create {overlay}: {r.err.strip()}",
                               hint="check free space and that qemu-utils is installed")
        made = overlay
    elif op.kind == "known_hosts":
        path, text = op.args
        if op.record:
            m.write_text(str(path), text, 0o644)
        else:  # this machine's own copy: its folder may not exist yet
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(text)
        made = path
    elif op.kind == "key":
        src, dest = op.args
        s, d = shlex.quote(str(src)), shlex.quote(str(dest))
        m.run(f"t=$(mktemp {d}.XXXXXX) && cat {s} > \"$t\" && chmod 600 \"$t\" && mv -f \"$t\" {d}", check=True)
        made = dest
    elif op.kind == "fetch_key":
        import os
        dest, text = op.args
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        dest.chmod(0o600)
    else:  # pragma: no cover - a plan_* above made it
        raise ValueError(op.kind)
    if made is not None and op.record:
        state.remember_created("files", str(made))
    return did(op.what, op.detail)
