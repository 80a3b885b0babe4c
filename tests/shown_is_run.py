"""Check a run's ``commands.jsonl`` (``helpers.record``): what each step's plan showed is what
its apply ran, and nothing else changed anything.

What counts as a change, precisely:
- a libvirt call that changes libvirt (define, undefine, start, destroy, nodedev-detach,
  nodedev-reattach), wherever it happens;
- any command run through ``Guest.run`` (not a read) while a step whose plan has actions
  is applied.
Reads (``kind: read``: files, ``test -e``, ``virsh domstate``...) may run anywhere, and a step
whose plan has no action may run facts (lspci, dmesg...) without planning them.

A planned line is a command of an Action with its trailing ``   # note`` cut off; lines that are
only a note (``# ...``) and checks (``...   # check: ...``) are for the engineer's eyes and need
not run. Returns the list of mismatches (empty: what was shown is what ran)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


def load(path: Path, label: str) -> list[dict]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get("label") == label]


def planned_lines(actions: list[dict]) -> tuple[list[str], list[str]]:
    """(the changes, the checks) a plan's actions show, each a command as it runs."""
    changes, checks = [], []
    for a in actions:
        for c in a.get("commands", []):
            s = c.strip()
            if not s or s.startswith("#"):
                continue
            note = ""
            if "\n" not in s:
                s, _, note = s.partition("   # ")
                s = s.strip()
            (checks if note.startswith("check") else changes).append(s)
    return changes, checks


@dataclass
class Walked:
    stage: str
    step: str
    actions: list[dict]
    unknown: str = ""
    applied: list[dict] = field(default_factory=list)
    planning: list[dict] = field(default_factory=list)


def walk(records: list[dict]) -> tuple[list[Walked], list[dict]]:
    """Each step as planned (its plan and the commands planning ran) and applied; and the
    commands run outside any step."""
    steps: list[Walked] = []
    pending: list[dict] = []
    outside: list[dict] = []
    for r in records:
        if r["kind"] == "plan":
            steps.append(Walked(r["stage"], r["step"], r["actions"], r.get("unknown", ""), planning=pending))
            pending = []
        elif r.get("phase") == "plan":
            pending.append(r)
        elif r.get("phase") == "apply":
            mine = [w for w in steps if (w.stage, w.step) == (r["stage"], r["step"])]
            (mine[-1].applied if mine else outside).append(r)
        else:
            outside.append(r)
    return steps, outside


def mismatches(records: list[dict]) -> list[str]:
    steps, outside = walk(records)
    bad = []
    for r in outside:
        if r["kind"] == "libvirt":
            bad.append(f"outside any step: libvirt {r['cmd']}")
    for w in steps:
        where = f"stage {w.stage}, step '{w.step}'"
        for r in w.planning:
            if r["kind"] == "libvirt":
                bad.append(f"{where}: its plan changed libvirt: {r['cmd']}")
        shown, checks = planned_lines(w.actions)
        ran, applied = [], False
        for r in w.applied:
            if r["kind"] == "applied":
                applied = True
                continue
            if r["kind"] == "read":
                continue
            cmd = (r.get("within") or r["cmd"]).strip()  # a call's own commands, or a planned one done in-process
            if not w.actions:
                if r["kind"] == "libvirt":
                    bad.append(f"{where}: planned no change but changed libvirt: {cmd}")
                continue
            ran.append(cmd)
            if cmd not in shown and cmd not in checks:
                bad.append(f"{where}: ran {cmd!r} on {r['machine']}, which its plan does not show")
        if applied:
            bad += [f"{where}: its plan shows {line!r}, which apply did not run" for line in shown if line not in ran]
    return bad


def applied_steps(records: list[dict]) -> list[tuple[str, str]]:
    """(stage, step) of each step that planned a change."""
    steps, _ = walk(records)
    return [(w.stage, w.step) for w in steps if w.actions]
