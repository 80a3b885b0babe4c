"""One way to act: a step's Action carried out exactly as its plan shows it.

Each command of ``Action.commands`` runs on the Action's machine through the one command
interface (``Guest.run``), in order, and must succeed; a line that is only a note (``# ...``)
or a check (``...   # check: ...``) is for the engineer's eyes and is not run, and a trailing
``   # note`` is not part of the command. A virsh line that changes libvirt (define, undefine,
start, destroy, nodedev-detach, nodedev-reattach) is made through ``helpers.virt`` on that
machine's libvirt; ``virsh define FILE`` takes FILE's XML from ``files``.

``helpers.record`` records each of them; ``tests/shown_is_run.py`` compares with the plans."""
from __future__ import annotations

import shlex
from typing import Callable

from .errors import RunbookError
from .steps import Action

LIBVIRT_CALLS = ("define", "undefine", "start", "destroy", "nodedev-detach", "nodedev-reattach")


def command_lines(action: Action) -> list[str]:
    """The commands apply runs: notes and checks left out, trailing notes cut."""
    out = []
    for c in action.commands:
        s = c.strip()
        if not s or s.startswith("#"):
            continue
        if "\n" not in s:
            s, _, note = s.partition("   # ")
            if note.startswith("check"):
                continue
        out.append(s.strip())
    return out


def libvirt_call(line: str) -> tuple[str, str] | None:
    """``virsh [-c URI] VERB ARG`` with a VERB that changes libvirt: (VERB, ARG); else None."""
    if not line.startswith("virsh "):
        return None
    words = shlex.split(line)[1:]
    if words[:1] == ["-c"]:
        words = words[2:]
    if len(words) == 2 and words[0] in LIBVIRT_CALLS:
        return words[0], words[1]
    return None


def machine(ctx, where: str):
    """The Guest an Action's ``machine`` names."""
    if where == "L0":
        return ctx.l0
    if where == "L1":
        return ctx.l1()
    if where == "L2":
        return ctx.l2()
    if where == "this machine":
        from .guest import Local
        return Local()
    raise ValueError(where)  # pragma: no cover - steps name one of the four


def libvirt(ctx, where: str):
    """The libvirt on an Action's machine: L0's (libvirt-python) or L1's (virsh in L1)."""
    from . import l0
    from .virt import Virsh
    if where == "L0":
        return l0.libvirt(ctx.params)
    if where == "L1":
        return Virsh(ctx.l1())
    raise ValueError(f"no libvirt on {where}")  # pragma: no cover


def run_libvirt(lv, verb: str, arg: str, files: dict[str, str]) -> None:
    if verb == "define":
        if arg not in files:  # pragma: no cover - a step that plans a define gives its XML
            raise ValueError(f"no XML for {arg}")
        lv.define(files[arg], file=arg)
    elif verb == "destroy":
        lv.destroy(arg)
        lv.wait_stopped(arg)
    elif verb == "undefine":
        lv.undefine(arg)
    elif verb == "start":
        lv.start(arg)
    else:
        lv.nodedev(verb, arg)


def run(ctx, action: Action, files: dict[str, str] | None = None, timeout: float = 300,
        failed: Callable[[str, str], RunbookError] | None = None) -> None:
    """Carry out ``action``: each command line, in order, on its machine; a libvirt line on
    that machine's libvirt. A command that fails raises ``failed(line, its words)`` when
    given, else a RunbookError naming the command."""
    guest = None
    for line in command_lines(action):
        if call := libvirt_call(line):
            run_libvirt(libvirt(ctx, action.machine), *call, files or {})
            continue
        guest = guest or machine(ctx, action.machine)
        _run_line(guest, action.machine, line, timeout, failed)


def run_on(guest, action: Action, timeout: float = 300,
           failed: Callable[[str, str], RunbookError] | None = None) -> None:
    """``run`` on a machine already at hand (an Action with no libvirt line)."""
    for line in command_lines(action):
        if libvirt_call(line):  # pragma: no cover - such an action goes through run(ctx, ...)
            raise ValueError(f"{line}: a libvirt call needs run(ctx, ...)")
        _run_line(guest, action.machine, line, timeout, failed)


def _run_line(guest, where: str, line: str, timeout: float, failed) -> None:
    r = guest.run(line, timeout=timeout)
    if r.ok:
        return
    words = (r.err or r.out).strip()
    if failed is not None:
        raise failed(line, words)
    raise RunbookError(f"{where}: `{line}` failed (exit code {r.rc}): {words[-300:]}",
                       hint=f"run it by hand on {where} to see why, fix that, then rerun the stage")
