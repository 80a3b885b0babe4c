"""What each machine actually ran, as JSON lines: the proof that a plan shows what apply runs.

Off unless the environment names it: with ``NESTED_NVME_RECORD=<label>`` a stage's kernel
appends one line per command to ``commands.jsonl`` in its run folder (``nb.stage`` starts it),
each with the label, the stage, the step and the phase it ran in (``plan`` or ``apply``):

- ``kind: "run"``: a command through ``Guest.run`` (L0, L1, L2 or this machine);
- ``kind: "read"``: a command issued through a read interface: ``Guest.read_text``,
  ``exists``, ``listdir``, ``readlink``, ``which``, ``is_dir``, ``size``, ``snapshot``,
  ``Libvirt``'s ``inactive_xml``, ``is_active`` and ``lib_version``, or inside ``reading()``;
- ``kind: "libvirt"``: a call that changes libvirt (define, undefine, start, destroy,
  nodedev-detach, nodedev-reattach) through ``helpers.virt``, with the virsh line it equals;
  the commands a ``Virsh`` runs for it are recorded with ``within`` set to that call;
- ``within``: set on commands run inside a planned command carried out in-process
  (``part_of``: the lab image build behind ``python -m helpers.lab.images``).

``tests/shown_is_run.py`` checks a run's lines against the plans the run state kept."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from . import guest

ENV = "NESTED_NVME_RECORD"
FILE = "commands.jsonl"

_file: Path | None = None
_label = ""
_where: dict = {"stage": None, "step": None, "phase": None}
_within: list[str] = []


def start(run_dir: Path, stage: str) -> None:
    """Record into ``run_dir/commands.jsonl`` when the environment asks for it."""
    global _file, _label
    label = os.environ.get(ENV, "")
    if not label:
        return
    _file, _label = Path(run_dir) / FILE, label
    _where.update(stage=stage, step=None, phase=None)
    guest.ON_RUN = command


def active() -> bool:
    return _file is not None


@contextlib.contextmanager
def step(label: str, phase: str):
    """Commands inside ran for step ``label`` while it was planned or applied."""
    old = dict(_where)
    _where.update(step=label, phase=phase, failed=None)
    try:
        yield
    except BaseException:
        old["failed"] = label  # the step an error came out of, for the error's record
        raise
    finally:
        _where.update(step=old["step"], phase=old["phase"], failed=old.get("failed"))


def current_step() -> str | None:
    """The label of the step being planned or applied now, or the one an error just came out of."""
    return _where["step"] or _where.get("failed")


reading = guest.reading  # commands inside only read (facts)


@contextlib.contextmanager
def part_of(command: str):
    """Commands inside carry out the planned ``command`` (done in-process, not as that one line)."""
    _write({"machine": "this process", "kind": "run", "cmd": command, "in_process": True})
    _within.append(command)
    try:
        yield
    finally:
        _within.pop()


def _write(entry: dict) -> None:
    if _file is None:
        return
    entry = {"label": _label, "stage": _where["stage"], "step": _where["step"], "phase": _where["phase"],
             **entry, "t": round(time.time(), 3)}
    if _within and "within" not in entry:
        entry["within"] = _within[-1]
    with open(_file, "a") as f:
        f.write(json.dumps(entry) + "\n")


def plan(step: str, planned: dict) -> None:
    """A step's plan, as the run state keeps it (``Plan.record``)."""
    if _file is not None:
        _write({"kind": "plan", "step": step, "phase": "plan", "actions": planned["actions"],
                "unknown": planned["unknown"]})


def applied(step: str) -> None:
    """Step ``step``'s apply returned: every change its plan showed was made."""
    if _file is not None:
        _write({"kind": "applied", "step": step, "phase": "apply"})


def command(machine: str, cmd: str, rc: int, read: bool = False) -> None:
    """A command ``machine`` ran (``Guest.run``; ``read``: through a read interface)."""
    if _file is not None:
        _write({"machine": machine, "kind": "read" if read else "run", "cmd": cmd, "rc": rc})


@contextlib.contextmanager
def libvirt_call(where: str, call: str, name: str, virsh: str):
    """A call that changes libvirt: ``call`` on ``name`` in ``where``, equal to the ``virsh`` line."""
    _write({"machine": where, "kind": "libvirt", "call": call, "name": name, "cmd": virsh})
    _within.append(virsh)
    try:
        yield
    finally:
        _within.pop()
