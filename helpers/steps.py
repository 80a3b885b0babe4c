"""Steps: a stage is a list of them; each plans (reads only), then applies exactly its plan.

Rule of this layer: ``plan(ctx)`` never changes anything; ``apply(ctx, plan)`` carries out
``plan.actions`` and nothing else (what to do was decided by ``plan``, kept in ``plan.data``);
``show(plan, result)`` displays what the step did from that plan and apply's result alone. A step
keeps nothing on itself between the three: what a later one needs is in the plan or the result.

Every mode walks the same list through ``Stage.step`` (helpers/nb.py): a batch run plans,
shows the plan, applies it; an interactive run shows the plan as the preview and applies it
on Confirm; check mode plans and shows, and never applies a step that would change something.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import RunbookError


@dataclass
class Action:
    """One change a step would make, exactly as apply will make it."""
    machine: str                  # "L0", "L1" or "L2": where it happens
    what: str                     # "create /var/lib/nested-nvme/nvme.raw (1 GiB, sparse)"
    commands: list[str] = field(default_factory=list)  # the exact commands (what an engineer would type)
    content: str | None = None    # a file's new content, a diff, or libvirt XML, when there is one


@dataclass
class Plan:
    step: str                      # the step's label
    actions: list[Action] = field(default_factory=list)  # empty: no change
    reason: str = ""               # "no change: <why>" or what the step reads
    unknown: str = ""              # non-empty: cannot be planned until an earlier change is made (says which)
    data: Any = None               # what apply needs, computed once by plan (apply never re-decides)

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    def summary(self) -> str:
        """One line: 'unknown until ...', 'no change: ...', 'reads: ...' or 'N changes: a; b'."""
        if self.unknown:
            return f"unknown until {self.unknown}"
        if not self.actions:
            return self.reason or "no change"
        whats = "; ".join(f"{a.machine}: {a.what}" for a in self.actions)
        return f"{len(self.actions)} change{'s' if len(self.actions) > 1 else ''}: {whats}"

    def record(self) -> dict:
        """The plan as the run state keeps it (for the runner's summary and report)."""
        return {"step": self.step, "changes": self.changes, "unknown": self.unknown, "reason": self.reason,
                "summary": self.summary(),
                "actions": [{"machine": a.machine, "what": a.what, "commands": list(a.commands)}
                            for a in self.actions]}


NO_CHANGE = "no change: "


def no_change_why(plan: Plan) -> str:
    """Why a plan makes no change (its reason without the leading 'no change: ')."""
    return plan.reason.removeprefix(NO_CHANGE)


class Step:
    """One step of a stage: subclasses set ``label`` (and ``reads_only`` for a step
    that only reads) and implement ``plan`` and ``apply``, and ``show`` for a display of
    their own. A step keeps no state: one instance may be planned, applied and shown anew."""
    label: str = ""
    reads_only: bool = False     # True: a step that only reads (its plan says what it reads)

    def plan(self, ctx) -> Plan:  # pragma: no cover - every step implements it
        raise NotImplementedError

    def apply(self, ctx, plan: Plan):  # pragma: no cover
        raise NotImplementedError

    def show(self, plan: Plan, result) -> None:
        """Display what the applied ``plan`` gave (``result``); default: operations' Changes as
        a table, nothing otherwise."""
        from . import ui
        from .ops import Change
        items = result if isinstance(result, (list, tuple)) else [result]
        changes = [c for c in items if isinstance(c, Change)]
        if changes:
            ui.show_changes(changes)

    # small helpers for plans
    def no_change(self, why: str, data: Any = None) -> Plan:
        return Plan(self.label, [], reason=f"{NO_CHANGE}{why}", data=data)

    def unknown(self, until: str) -> Plan:
        return Plan(self.label, [], unknown=until)

    def reads(self, what: str, data: Any = None) -> Plan:
        return Plan(self.label, [], reason=f"reads: {what}", data=data)


class StepRun:
    """What ``Stage.step`` gives back, in every mode: ``plan``, ``applied`` and ``result``.

    ``result`` is apply's result; asking for it when the step was not applied (check
    mode, or before Confirm in an interactive run) raises a RunbookError saying why."""

    def __init__(self, step: Step, mode: str, plan: Plan | None = None):
        self.step, self.mode, self.plan = step, mode, plan
        self.applied = False
        self._result = None
        self.button = None      # interactive runs: the StepButton

    def done(self, result) -> None:
        self._result, self.applied = result, True

    @property
    def result(self):
        if self.applied:
            return self._result
        label = self.step.label
        if self.mode == "check":
            raise RunbookError(f"step '{label}' was only planned (check mode): it has no result",
                               hint="run the stage with mode='run' (without --check) to carry the plan out")
        if self.plan is not None and self.plan.unknown:
            raise RunbookError(f"step '{label}' could not be planned: unknown until {self.plan.unknown}",
                               hint="run the earlier steps first")
        raise RunbookError(f"step '{label}' has not been applied yet",
                           hint="press its button (and Confirm when it shows a plan) first")

    def __repr__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"<step {self.step.label!r}: {self.plan.summary() if self.plan else 'not planned yet'}; {state}>"


def walk_names(steps) -> list[str]:
    """The class names of a stage's STEPS (classes or instances), in order."""
    return [s.__name__ if isinstance(s, type) else type(s).__name__ for s in steps]
