"""Executing the chosen stages in a run folder, under the L1 lock: each attempt recorded
in ``summary.json`` as it begins and as it ends, a stage not plannable skipped in check
mode, the first failure explained (L1's part in it) and, when asked, torn down after;
``summary.json`` and ``report.html`` always written."""
from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from ..params import Params
from .attempts import begin_attempt, monotonic_start, settle_dead_attempts, stage_steps
from .choice import plannable
from .diagnose import explain_l1
from .folders import resume_command, seed_check_state, write_summary
from .ctrl_c import CtrlC
from .kernel import run_stage
from .prewarm import Kernels


def run_locked(args, p: Params, params_file: Path, available: dict[str, Path], chosen: list[str],
               run_dir: Path, lock) -> int:
    """Run the ``chosen`` stages in ``run_dir`` while ``lock`` holds L1: the exit code
    (0 passed, 1 a stage failed, 130 interrupted)."""
    with CtrlC(lock.owner) as ctrl_c:
        run = StageRun(args, p, params_file, available, run_dir, lock, ctrl_c)
        run.begin(chosen)
        run.walk(chosen)
        run.after_failure(chosen)
        return run.finish()


class StageRun:
    """One invocation's stages in one run folder: the summary it keeps current, the
    stage that failed (if any) and whether Ctrl-C stopped it."""

    def __init__(self, args, p: Params, params_file: Path, available: dict[str, Path], run_dir: Path, lock,
                 ctrl_c: CtrlC):
        self.args, self.p, self.params_file, self.available, self.run_dir, self.lock, self.ctrl_c = (
            args, p, params_file, available, run_dir, lock, ctrl_c)
        self.state_file = run_dir / "state.json"
        self.summary_path = run_dir / "summary.json"
        summary = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}
        summary.update(run_id=run_dir.name, params=str(params_file),
                       started=summary.get("started") or datetime.now().isoformat(timespec="seconds"))
        self.results = {s["stage"]: s for s in summary.get("stages", [])}
        self.mode = "check" if getattr(args, "check", False) else "run"
        summary["mode"] = self.mode
        self.summary = summary
        self.failed: dict | None = None
        self.interrupted: dict | None = None

    def begin(self, chosen: list[str]) -> None:
        """A check run's state seeded, then what runs where, the lock's notes and the attempts found killed."""
        if self.mode == "check" and not self.state_file.exists():
            if earlier := seed_check_state(self.run_dir, self.params_file, self.state_file):
                self.summary["state_from"] = earlier
                print(f"check mode: starting from what run {earlier} learned (its state.json, copied)", flush=True)
        print(f"run {self.run_dir.name}: stages {', '.join(chosen)} with {self.params_file.name} -> {self.run_dir}"
              + (" (check mode: every step planned and shown, nothing changed)" if self.mode == "check" else ""),
              flush=True)
        for note in self.lock.notes:
            print(f"NOTE: {note}", flush=True)
        for stage in settle_dead_attempts(self.results):
            print(f"NOTE: stage {stage}'s earlier attempt was killed before it ended; its notebook is kept", flush=True)

    def walk(self, chosen: list[str]) -> None:
        """The stages in order, up to the first that does not pass; each next stage's kernel
        started while the one before runs (``prewarm``), none left when the walk ends."""
        runs = [s for s in chosen if self.mode != "check" or plannable(s, self.available[s])]
        following = dict(zip(runs, runs[1:]))
        from ..report import load_exporter_ahead
        load_exporter_ahead()  # the report's renderer loads while the stages run
        kernels = Kernels()
        try:
            for stage in chosen:
                if stage not in runs:
                    self.skip(stage)
                    continue
                entry = self.attempt(stage, kernels, following.get(stage))
                if entry["status"] != "passed":
                    self.failed = entry
                    break
        finally:
            kernels.close()

    def skip(self, stage: str) -> None:
        """A stage check mode cannot plan: recorded as skipped, nothing run."""
        name = self.available[stage].name
        self.results[stage] = {"stage": stage, "notebook": name, "status": "not plannable",
                               "seconds": 0.0, "note": f"{name} is not made of steps yet (its "
                                                       "notebook takes no `mode`): skipped, so nothing is changed"}
        print(f"== stage {stage} not plannable yet: skipped in check mode", flush=True)

    def attempt(self, stage: str, kernels: Kernels, following: str | None) -> dict:
        """One attempt at the stage, recorded running before it starts and with its end after;
        the ``following`` stage's kernel started meanwhile in ``kernels``. After Ctrl-C the stage
        is recorded as interrupted: before it began (nothing of it ran), or while it ran (its
        kernel was stopped), unless it had passed already."""
        print(f"== stage {stage} ({self.available[stage].stem}) ...", flush=True)
        self.results[stage] = begin_attempt(self.run_dir, stage, self.available[stage], self.results.get(stage))
        self.record()
        t0 = time.monotonic()
        entry, began = None, self.ctrl_c.requested is None
        if began:
            try:
                with kernels.for_stage(self.available[stage], following and self.available[following]) as km:
                    entry = run_stage(stage, self.available[stage], self.run_dir, self.params_file,
                                      self.state_file, self.args.cell_timeout,
                                      open(os.devnull, "w") if self.args.quiet else sys.stdout, mode=self.mode, km=km)
                entry["seconds"] = round(time.monotonic() - t0, 1)  # with the hand-over and the kernel's shutdown
            except KeyboardInterrupt:  # the kernel itself was interrupted
                self.ctrl_c.note()
        if self.ctrl_c.requested is not None and (entry is None or entry["status"] != "passed"):
            entry = {"stage": stage, "notebook": self.available[stage].name, "status": "interrupted",
                     "error": "interrupted (Ctrl-C / SIGINT) " + ("while the stage ran" if began else
                                                                  "before the stage began: nothing of it ran"),
                     "hint": f"resume with `{resume_command(self.params_file, self.run_dir, stage)}`",
                     "seconds": round(time.monotonic() - monotonic_start(self.results[stage]), 1)}
            self.interrupted = entry
        entry["earlier"] = self.results[stage].get("earlier", [])
        if not entry["earlier"]:
            entry.pop("earlier")
        if walked := stage_steps(self.state_file, stage):
            entry["steps"] = walked
        self.results[stage] = entry
        self.record()
        print(f"== stage {stage} {entry['status']} in {entry['seconds']} s", flush=True)
        return entry

    def record(self) -> None:
        """summary.json with every stage's latest entry, in stage order."""
        self.summary["stages"] = [self.results[k] for k in sorted(self.results)]
        write_summary(self.run_dir, self.summary)

    def after_failure(self, chosen: list[str]) -> None:
        """A stage that failed (not interrupted): L1's part in it named, then teardown if asked."""
        failed = self.failed
        if failed and not self.interrupted and failed["stage"] not in ("01", "99"):
            explain_l1(failed, self.p, self.state_file)
        if failed and not self.interrupted and self.args.teardown_on_failure and "99" in self.available \
                and "99" not in chosen and self.ctrl_c.requested is None:
            print("== teardown after the failure ...", flush=True)
            self.results["99"] = run_stage("99", self.available["99"], self.run_dir, self.params_file,
                                           self.state_file, self.args.cell_timeout, open(os.devnull, "w"))

    def finish(self) -> int:
        """The run's status, summary.json and report.html written; what happened said; the exit code."""
        summary = self.summary
        summary["stages"] = [self.results[k] for k in sorted(self.results)]
        # the run's status covers every stage it has recorded, not only this invocation's
        summary["status"] = "failed" if any(s["status"] not in ("passed", "not plannable")
                                            for s in summary["stages"]) else "passed"
        summary["finished"] = datetime.now().isoformat(timespec="seconds")
        write_summary(self.run_dir, summary)
        from ..report import write_report
        report = write_report(self.run_dir, summary)
        print(f"summary: {self.summary_path}\nreport:  {report}")
        if self.interrupted:
            print(f"\nINTERRUPTED at stage {self.interrupted['stage']}: nothing more was run; the run state "
                  f"({self.state_file}) keeps what the stages learned.\nHINT: {self.interrupted['hint']}",
                  file=sys.stderr)
            return 130
        if self.ctrl_c.requested is not None:
            print("\nNOTE: Ctrl-C came after the last stage had ended: nothing was stopped", file=sys.stderr)
        if self.failed:
            failed = self.failed
            print(f"\nFAILED at stage {failed['stage']}, cell In [{failed['cell']}]: {failed['cell_source']}\n"
                  f"  {failed['error']}\nHINT: {failed['hint']}", file=sys.stderr)
            return 1
        return 0
