"""A stage's attempts in ``summary.json``: one begins (the earlier attempt's notebook
and entry kept), one left running by a runner that is gone becomes 'killed', and an
ended one lists the steps it walked with their times."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

from ..records import keep_earlier


def begin_attempt(run_dir: Path, stage: str, template: Path, earlier: dict | None) -> dict:
    """A stage about to run: keep the earlier attempt's notebook (renamed) and entry,
    and mark this one running with the runner's pid (a later run can tell it was killed)."""
    entry = {"stage": stage, "notebook": template.name, "status": "running", "pid": os.getpid(),
             "started": datetime.now().isoformat(timespec="seconds")}
    if earlier:
        attempts = earlier.pop("earlier", [])
        kept = keep_earlier(run_dir / template.name)
        if kept:
            earlier["notebook"] = kept.name
            attempts.append(earlier)
        entry["earlier"] = attempts
    return entry


def settle_dead_attempts(entries: dict[str, dict]) -> list[str]:
    """Entries left 'running' by a runner that is gone (SIGKILL, a crash, a reboot of
    L0) become 'killed', so the record says what happened. Returns the stages."""
    from ..runlock import alive
    settled = []
    for stage, e in entries.items():
        if e.get("status") == "running" and not (e.get("pid") != os.getpid() and alive(e.get("pid", 0))):
            e.update(status="killed", error=f"the runner (pid {e.get('pid')}) stopped during this stage "
                                            "and did not record its end (killed, or its machine stopped)",
                     hint=f"resume with --from {stage}")
            settled.append(stage)
    return settled


def stage_steps(state_file: Path, stage: str) -> list[dict]:
    """The steps the stage walked, each with its plan (recorded by ``Stage.step``)."""
    try:
        walked = json.loads(state_file.read_text()).get("steps", {}).get(stage, [])
    except (OSError, ValueError):
        return []
    return [{"step": w.get("step"), "class": w.get("class"), "plan": w.get("summary"),
             "changes": w.get("changes"), "unknown": w.get("unknown") or "", "applied": bool(w.get("applied")),
             "actions": w.get("actions", []), **step_seconds(w)} for w in walked]


def step_seconds(walked: dict) -> dict:
    """A walked step's times (``Stage.plan``/``Stage.apply`` record them): planning, applying
    (absent when not applied) and, of the apply, the waits for a machine, each named."""
    times = {"plan_seconds": walked.get("plan_s")}
    if walked.get("apply_s") is not None:
        waits = walked.get("waits") or []
        times.update(apply_seconds=walked["apply_s"], wait_seconds=round(sum(w["seconds"] for w in waits), 2),
                     waits=waits)
    return times


def monotonic_start(entry: dict) -> float:
    """monotonic() at the entry's start, from its wall-clock start time."""
    try:
        begun = datetime.fromisoformat(entry["started"]).timestamp()
    except (KeyError, ValueError):
        return time.monotonic()
    return time.monotonic() - max(0.0, time.time() - begun)
