"""The command line: run stages with papermill into a run folder.

    python -m helpers run --params parameters/lab.yaml [--stages 01,02] [--from 03] [--check]

Each stage notebook runs headless into ``outputs/<run-id>/NN_stage.ipynb``
with the parameter file and the run's state file. The first failing stage
stops the run with a short summary and a HINT; ``summary.json`` and
``report.html`` are always written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from .params.fit import check_fit
from . import params as params_mod
from .errors import RunbookError
from .records import keep_earlier

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUTPUTS = ROOT / "outputs"
DEFAULT_PARAMS = ROOT / "parameters" / "lab.yaml"
MAIN_STAGES = ("01", "02", "03", "04", "05")
STAGE_PARAMETERS = ("params_file", "state_file", "interactive", "mode")  # what every notebook's parameters cell takes
# Stages that only read (no step changes anything): in check mode they run even before their notebook
# takes the `mode` parameter.
READ_ONLY_STAGES = ("01",)


def notebook_parameters(template: Path) -> set[str]:
    """The names the notebook's parameters cell declares."""
    try:
        cells = json.loads(template.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return set()
    for c in cells:
        if "parameters" in c.get("metadata", {}).get("tags", []):
            src = "".join(c["source"])
            return set(re.findall(r"^(\w+)\s*[:=]", src, re.M))
    return set()


def plannable(stage: str, template: Path) -> bool:
    """Can the stage run in check mode? Its notebook takes `mode`, or it only reads."""
    return "mode" in notebook_parameters(template) or stage in READ_ONLY_STAGES


def stages(notebooks: Path = NOTEBOOKS) -> dict[str, Path]:
    """Stage number -> notebook template, from the files NN_name.ipynb."""
    found = {}
    for nb in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        found[nb.name[:2]] = nb
    return found


STAGE_RE = re.compile(r"^\d{1,2}$")


def _stage_number(text: str, option: str, available: dict[str, Path]) -> str:
    """'3' -> '03', or why it is not a stage."""
    if not STAGE_RE.match(text):
        raise RunbookError(f"{option}: `{text}` is not a stage number: stages are {', '.join(available)}")
    return text.zfill(2)


def pick_stages(available: dict[str, Path], only: str | None, start: str | None) -> list[str]:
    """The stages to run: ``--stages 01,02``, ``--from 03``, or the main ones.
    Refused, in one line with what to type: an empty list, a stage that is not
    one, a stage given twice, stages out of order, ``--from 99``."""
    if only is not None and start is not None:
        raise RunbookError("--stages and --from cannot be used together: type one of them, "
                           "e.g. `--from 03` or `--stages 03,04`")
    if only is not None:
        parts = [s.strip() for s in only.split(",") if s.strip()]
        if not parts:
            raise RunbookError("--stages is empty: give the stages to run, e.g. `--stages 01,02`, "
                               "or `--stages 99` to tear down")
        chosen = [_stage_number(s, f"--stages {only}", available) for s in parts]
        twice = sorted({s for s in chosen if chosen.count(s) > 1})
        if twice:
            raise RunbookError(f"--stages {only}: stage {', '.join(twice)} given twice: "
                               f"type `--stages {','.join(sorted(set(chosen)))}`")
        if chosen != sorted(chosen):
            raise RunbookError(f"--stages {only}: stages run in order: type `--stages {','.join(sorted(chosen))}`")
    elif start is not None:
        if not start.strip():
            raise RunbookError("--from is empty: give the stage to start from, e.g. `--from 03`")
        start = _stage_number(start.strip(), f"--from {start}", available)
        if start not in MAIN_STAGES and start in available:
            raise RunbookError(f"--from {start}: stage {start} is not followed by others "
                               f"(teardown runs alone): type `--stages {start}`")
        if start not in available:
            raise RunbookError(f"--from {start}: no such stage: stages are {', '.join(available)}")
        chosen = [s for s in available if s in MAIN_STAGES and s >= start]
    else:
        chosen = [s for s in available if s in MAIN_STAGES]
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise RunbookError(f"--stages {only}: no notebook for stage(s) {', '.join(unknown)}: "
                           f"stages are {', '.join(available)}")
    return chosen


RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_id(run_id: str | None, outputs: Path | None = None) -> None:
    """A run id is a plain folder name under --outputs (no '/', no '..'), not a file there."""
    if run_id is None:
        return
    if not RUN_ID_RE.match(run_id):
        raise RunbookError(f"--run-id {run_id!r}: not a plain folder name: give a name such as `try-2` "
                           "(letters, digits, '.', '_', '-'; it becomes a folder under --outputs)")
    if outputs is not None and (outputs / run_id).exists() and not (outputs / run_id).is_dir():
        raise RunbookError(f"--run-id {run_id}: {outputs / run_id} is a file, not a run folder: give another name")


def check_outputs(outputs: Path) -> None:
    """--outputs is a folder, or can become one, where run folders can be written."""
    resolved = Path(os.path.abspath(outputs))
    tree = next((t for t in ("/proc", "/sys", "/dev") if resolved == Path(t) or Path(t) in resolved.parents), None)
    if tree:
        raise RunbookError(f"--outputs {outputs} is under {tree}, where the kernel keeps its own state: "
                           "give a folder on a disk, e.g. `--outputs outputs`")
    here = outputs
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        what = "is a file" if here == outputs else f"is under {here}, a file"
        raise RunbookError(f"--outputs {outputs} {what}, not a folder: give a folder (it is created if missing), "
                           "e.g. `--outputs outputs`")
    if not os.access(here, os.W_OK | os.X_OK):
        raise RunbookError(f"--outputs {outputs}: {here} is not writable for this user: give a folder you can "
                           "write, e.g. `--outputs outputs`")


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def run_dir_for(outputs: Path, run_id: str | None, resume: bool, check: bool = False) -> Path:
    """A new run folder, or the given/latest one when resuming. A check run always gets
    a new folder of its own (``<time>-check``) and does not become ``latest``."""
    check_outputs(outputs)
    check_run_id(run_id, outputs)
    latest = outputs / "latest"
    suffix = "-check" if check else ""
    if run_id:
        d = outputs / run_id
        if check and d.exists():
            raise RunbookError(f"--run-id {run_id}: {d} exists; a check run never writes into an earlier run: "
                               "give a new name, or leave --run-id out")
    elif resume and latest.exists() and not check:
        d = latest.resolve()
    else:
        d = outputs / (new_run_id() + suffix)
        n = 1
        while d.exists():
            d = outputs / f"{new_run_id()}-{n}{suffix}"
            n += 1
    d.mkdir(parents=True, exist_ok=True)
    if check:
        return d
    if latest.is_symlink() or not latest.exists():
        if latest.is_symlink():
            latest.unlink()
        latest.symlink_to(d.name)
    return d


HINTS = {
    "ParamsError": "fix the parameter file and run again",
    "GuestError": "a command in a guest failed: read the stage notebook's last cell output",
    "PapermillExecutionError": "open the stage notebook in the run folder and read the failing cell",
    "DeadKernelError": "the kernel died: look at memory use and the stage notebook",
}


def failure_summary(stage: str, nb_path: Path, err: BaseException, state_file: Path | None = None) -> dict:
    """What failed, where, and what to do: the fields the stage kept of its RunbookError
    (``nb._keep_errors``: the step, the message, the HINT), else from papermill's error."""
    ename = getattr(err, "ename", type(err).__name__)
    evalue = str(getattr(err, "evalue", err))
    kept = recorded_error(state_file, stage) if ename == "RunbookError" else None
    cell, source = getattr(err, "exec_count", None), ""
    if nb_path.exists():  # the failing cell is the one with an error output
        try:
            for c in json.loads(nb_path.read_text())["cells"]:
                if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                    cell = c.get("execution_count")
                    source = "".join(c["source"]).strip().splitlines()[0][:120]
                    break
        except (ValueError, KeyError, IndexError):
            pass
    hint = ""
    if kept:
        evalue, hint = kept["message"].strip(), (kept.get("hint") or "").strip()
    else:  # an error the stage did not keep (not a RunbookError, or a kernel that died)
        m = re.search(r"HINT: (.*)", evalue)
        if m:
            hint = m.group(1).strip()
            evalue = evalue[: m.start()].strip()
    hint = hint or HINTS.get(ename, f"read {nb_path.name} in the run folder, fix, then resume with --from {stage}")
    out = {"stage": stage, "cell": cell, "cell_source": source, "error": f"{ename}: {evalue}", "hint": hint}
    if kept and kept.get("step"):
        out["step"] = kept["step"]
    return out


def recorded_error(state_file: Path | None, stage: str) -> dict | None:
    """The RunbookError stage ``stage`` kept in the run state (``nb._keep_errors``), if any."""
    if state_file is None or not Path(state_file).exists():
        return None
    try:
        kept = json.loads(Path(state_file).read_text()).get("error")
    except ValueError:
        return None
    return kept if isinstance(kept, dict) and kept.get("stage") == stage and kept.get("message") else None


def explain_l1(failed: dict, p: params_mod.Params, state_file: Path | None = None) -> None:
    """Name what happened to L1 when a stage failed because of it: L1 stopped outside
    the runbook, SSH into it lost, or its vCPUs stalled (the failing command was
    their victim), read off L1's console or, after stage 03, from L1 no longer
    answering at all."""
    from .access import back_from_02, l1_guest, l1_not_running, l1_silent, l1_ssh_lost, l1_stall
    from .state import State
    if "stopped outside the runbook" in failed["error"] or "SSH into L1 is lost" in failed["error"]:
        return  # the stage named it already
    if failed["stage"] >= "03" and state_file is not None and state_file.exists():
        if why := l1_not_running(p):  # L1 vanished behind the runbook's back
            failed["error"] = f"{why}, stopped outside the runbook; {failed['error']}"
            failed["hint"] = back_from_02(summary_params(p, state_file))
            return
        try:
            lost = l1_ssh_lost(p, l1_guest(p, State(state_file)))
        except RunbookError:
            lost = None
        if lost:
            failed["error"] = f"{lost}; {failed['error']}"
            failed["hint"] = ("stage 02 starts L1's SSH server again through the guest agent: "
                              f"`python -m helpers run --params {summary_params(p, state_file)} --from 02`")
            return
    hint = ("L1's vCPUs stopped making progress (under TCG emulation a known hazard of the lab); "
            "tear down with `--stages 99` and run again")
    if stall := l1_stall(p):
        failed["l1_stall"] = stall
        failed["error"] = f"L1 stalled (its console: {stall!r}); {failed['error']}"
        failed["hint"] = hint
        return
    if failed["stage"] < "04" or state_file is None or not state_file.exists():
        return
    try:
        l1 = l1_guest(p, State(state_file))
    except RunbookError:
        return
    if silent := l1_silent(l1):
        failed["l1_stall"] = silent
        failed["error"] = f"L1 stalled (it no longer answers: {silent}); {failed['error']}"
        failed["hint"] = hint


def summary_params(p, state_file: Path) -> str:
    """The parameter file a run used, for a command to type."""
    try:
        return json.loads((state_file.parent / "summary.json").read_text())["params"]
    except (OSError, ValueError, KeyError):
        return "<your parameter file>"


class _Quiet:
    """A stream that drops the kernel's transport warning, passing the rest on."""

    NOISE = ("Kernel is running over TCP without encryption",)

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if not any(n in text for n in self.NOISE):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def kernel_manager_class():
    """jupyter_client's kernel manager, except that it does not interrupt the kernel on its way
    to a shutdown. jupyter_client sends SIGINT before every shutdown_request; when it lands while
    ipykernel is still finishing the last cell's handler (the reply is sent, the handler not yet
    returned), the kernel logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." on the
    terminal of a stage that passed. The last cell has finished by then: nothing needs interrupting.
    A cell that runs past its timeout is still interrupted (nbclient calls interrupt_kernel outside
    a shutdown), and Ctrl-C kills the kernel (``_interruptible``)."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def run_stage(stage: str, template: Path, run_dir: Path, params_file: Path, state_file: Path,
              timeout: int, log, mode: str = "run") -> dict:
    """Execute one stage notebook with papermill; return its summary entry. A
    KeyboardInterrupt (Ctrl-C) propagates: the caller records where it stopped."""
    import papermill as pm

    out = run_dir / template.name
    t0 = time.monotonic()
    entry = {"stage": stage, "notebook": out.name}
    try:
        pm.execute_notebook(
            str(template), str(out),
            parameters={"params_file": str(params_file), "state_file": str(state_file), "interactive": False,
                        **({"mode": mode} if "mode" in notebook_parameters(template) else {})},
            cwd=str(template.parent), kernel_name="python3", progress_bar=False,
            log_output=True, stdout_file=log, stderr_file=_Quiet(log), execution_timeout=timeout,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],  # no transport warning on the console
            kernel_manager_class=kernel_manager_class(),
        )
        entry["status"] = "passed"
    except Exception as e:  # papermill's errors and the kernel's
        entry.update(status="failed", **failure_summary(stage, out, e, state_file))
        if entry["error"].startswith("KeyboardInterrupt"):  # Ctrl-C reached the kernel too
            raise KeyboardInterrupt from e
    entry["seconds"] = round(time.monotonic() - t0, 1)
    return entry


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
    from .runlock import alive
    settled = []
    for stage, e in entries.items():
        if e.get("status") == "running" and not (e.get("pid") != os.getpid() and alive(e.get("pid", 0))):
            e.update(status="killed", error=f"the runner (pid {e.get('pid')}) stopped during this stage "
                                            "and did not record its end (killed, or its machine stopped)",
                     hint=f"resume with --from {stage}")
            settled.append(stage)
    return settled


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def run(args) -> int:
    params_file = Path(args.params).resolve()
    try:
        available = stages(Path(args.notebooks))
        chosen = pick_stages(available, args.stages, args.start)
        check_outputs(Path(args.outputs))
        check_run_id(args.run_id, Path(args.outputs))
        if args.check and args.run_id and (Path(args.outputs) / args.run_id).exists():
            raise RunbookError(f"--run-id {args.run_id}: {Path(args.outputs) / args.run_id} exists; a check run "
                               "never writes into an earlier run: give a new name, or leave --run-id out")
        p = params_mod.load(params_file)
        try:
            check_fit(p, params_file, chosen)
        except params_mod.ParamsError as e:
            if not args.check:
                raise
            # check mode changes nothing, so it goes on: each step's plan shows what these would stop
            print(f"NOTE: a run would be refused on this host:\n{e}\ncheck mode goes on to show every step's "
                  "plan; the steps these concern say so", flush=True)
    except (params_mod.ParamsError, RunbookError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.check and args.teardown_on_failure:
        print("ERROR: --check changes nothing, so it tears nothing down: leave out --teardown-on-failure",
              file=sys.stderr)
        return 2
    from .runlock import L1Lock
    try:  # before the run folder exists: a refused run leaves nothing behind
        lock = L1Lock(p.l1.name, args.run_id or "(starting)", str(params_file)).acquire()
    except RunbookError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    try:
        run_dir = run_dir_for(Path(args.outputs), args.run_id, resume=bool(args.stages or args.start),
                              check=args.check)
        lock.name_run(run_dir.name)
        return run_locked(args, p, params_file, available, chosen, run_dir, lock)
    finally:
        lock.release()


@contextlib.contextmanager
def stop_kernels_on_sigint(owner: str):
    """Ctrl-C (SIGINT) stops the stage at once: the stage's kernel is killed first,
    so it neither goes on acting on L1 nor prints its own traceback, then the runner
    records where it stopped (KeyboardInterrupt)."""
    from .runlock import owned_processes, stop_processes

    def on_sigint(signum, frame):
        stop_processes(owned_processes(owner), grace=0)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def resume_command(params_file: Path, run_dir: Path, stage: str) -> str:
    return (f"python -m helpers run --params {params_file} --outputs {run_dir.parent} "
            f"--run-id {run_dir.name} --from {stage}")


def run_locked(args, p, params_file: Path, available: dict[str, Path], chosen: list[str],
               run_dir: Path, lock) -> int:
    state_file = run_dir / "state.json"
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(run_id=run_dir.name, params=str(params_file), started=summary.get("started") or datetime.now().isoformat(timespec="seconds"))
    results = {s["stage"]: s for s in summary.get("stages", [])}
    mode = "check" if getattr(args, "check", False) else "run"
    summary["mode"] = mode
    if mode == "check" and not state_file.exists():
        if earlier := seed_check_state(run_dir, params_file, state_file):
            summary["state_from"] = earlier
            print(f"check mode: starting from what run {earlier} learned (its state.json, copied)", flush=True)
    print(f"run {run_dir.name}: stages {', '.join(chosen)} with {params_file.name} -> {run_dir}"
          + (" (check mode: every step planned and shown, nothing changed)" if mode == "check" else ""), flush=True)
    for note in lock.notes:
        print(f"NOTE: {note}", flush=True)
    for stage in settle_dead_attempts(results):
        print(f"NOTE: stage {stage}'s earlier attempt was killed before it ended; its notebook is kept", flush=True)
    failed = interrupted = None
    for stage in chosen:
        if mode == "check" and not plannable(stage, available[stage]):
            results[stage] = {"stage": stage, "notebook": available[stage].name, "status": "not plannable",
                              "seconds": 0.0, "note": f"{available[stage].name} is not made of steps yet (its "
                                                      "notebook takes no `mode`): skipped, so nothing is changed"}
            print(f"== stage {stage} not plannable yet: skipped in check mode", flush=True)
            continue
        print(f"== stage {stage} ({available[stage].stem}) ...", flush=True)
        results[stage] = begin_attempt(run_dir, stage, available[stage], results.get(stage))
        summary["stages"] = [results[k] for k in sorted(results)]
        write_summary(run_dir, summary)
        try:
            with stop_kernels_on_sigint(lock.owner):
                entry = run_stage(stage, available[stage], run_dir, params_file, state_file, args.cell_timeout,
                                  open(os.devnull, "w") if args.quiet else sys.stdout, mode=mode)
        except KeyboardInterrupt:
            entry = {"stage": stage, "notebook": available[stage].name, "status": "interrupted",
                     "error": "interrupted (Ctrl-C / SIGINT) while the stage ran",
                     "hint": f"resume with `{resume_command(params_file, run_dir, stage)}`",
                     "seconds": round(time.monotonic() - _started(results[stage]), 1)}
            interrupted = entry
        entry["earlier"] = results[stage].get("earlier", [])
        if not entry["earlier"]:
            entry.pop("earlier")
        if walked := stage_steps(state_file, stage):
            entry["steps"] = walked
        results[stage] = entry
        summary["stages"] = [results[k] for k in sorted(results)]
        write_summary(run_dir, summary)
        print(f"== stage {stage} {entry['status']} in {entry['seconds']} s", flush=True)
        if entry["status"] != "passed":
            failed = entry
            break
    if failed and not interrupted and failed["stage"] not in ("01", "99"):
        explain_l1(failed, p, state_file)
    if failed and not interrupted and args.teardown_on_failure and "99" in available and "99" not in chosen:
        print("== teardown after the failure ...", flush=True)
        results["99"] = run_stage("99", available["99"], run_dir, params_file, state_file, args.cell_timeout,
                                  open(os.devnull, "w"))
    summary["stages"] = [results[k] for k in sorted(results)]
    # the run's status covers every stage it has recorded, not only this invocation's
    summary["status"] = "failed" if any(s["status"] not in ("passed", "not plannable")
                                        for s in summary["stages"]) else "passed"
    summary["finished"] = datetime.now().isoformat(timespec="seconds")
    write_summary(run_dir, summary)
    from .report import write_report
    report = write_report(run_dir, summary)
    print(f"summary: {summary_path}\nreport:  {report}")
    if interrupted:
        print(f"\nINTERRUPTED at stage {interrupted['stage']}: nothing more was run; the run state "
              f"({state_file}) keeps what the stages learned.\nHINT: {interrupted['hint']}", file=sys.stderr)
        return 130
    if failed:
        print(f"\nFAILED at stage {failed['stage']}, cell In [{failed['cell']}]: {failed['cell_source']}\n"
              f"  {failed['error']}\nHINT: {failed['hint']}", file=sys.stderr)
        return 1
    return 0


def seed_check_state(run_dir: Path, params_file: Path, state_file: Path) -> str | None:
    """A check run plans what resuming the latest run would do: it starts from a copy of
    that run's state (what it learned: the accelerators, the BDF, the baseline) when the
    latest run used the same parameter file. The latest run itself is left as it is."""
    latest = run_dir.parent / "latest"
    try:
        earlier = latest.resolve()
        used = json.loads((earlier / "summary.json").read_text()).get("params")
        data = json.loads((earlier / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if used != str(params_file):
        return None
    data.pop("steps", None)
    state_file.write_text(json.dumps(data, indent=2, sort_keys=True))
    return earlier.name


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


def _started(entry: dict) -> float:
    """monotonic() at the entry's start, from its wall-clock start time."""
    try:
        begun = datetime.fromisoformat(entry["started"]).timestamp()
    except (KeyError, ValueError):
        return time.monotonic()
    return time.monotonic() - max(0.0, time.time() - begun)


def check_params(args) -> int:
    """Validate a parameter file; unless --schema-only, against this host too."""
    try:
        p = params_mod.load(args.params)
        if not args.schema_only:
            check_fit(p, args.params)
    except (params_mod.ParamsError, RunbookError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.schema_only:
        print(f"{args.params}: valid for the schema; not checked against this host "
              f"(to check it: python -m helpers check-params {args.params})")
    else:
        print(f"{args.params}: valid, and this host can run it (CPUs, memory, files, free space, biggest file, "
              "SSH port)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, refusing a bad command line in one line (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"ERROR: {message}: see `{self.prog} --help`\n")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number of seconds above 0")
    return n


def compare(args) -> int:
    from .bench import compare as compare_mod
    return compare_mod.main(args.runs, None if args.no_plot else args.plot)


def fleet(args) -> int:
    from .fleet.command import fleet as fleet_command
    return fleet_command(args)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m helpers", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", metavar="{run,check-params,compare,fleet}")
    r = sub.add_parser("run", help="run stages with papermill into outputs/<run-id>/")
    r.add_argument("--params", default=str(DEFAULT_PARAMS), help="parameter file (default: the lab)")
    r.add_argument("--stages", help="comma-separated stages, in order, e.g. 01,02 or 99 (resumes the latest run)")
    r.add_argument("--from", dest="start", help="run from this main stage on (resumes the latest run)")
    r.add_argument("--run-id", help="run folder name under outputs/ to create or resume (a plain name)")
    r.add_argument("--outputs", default=str(OUTPUTS), help="where run folders go")
    r.add_argument("--notebooks", default=str(NOTEBOOKS), help=argparse.SUPPRESS)
    r.add_argument("--cell-timeout", type=_positive, default=3600, help="seconds any one cell may take")
    r.add_argument("--teardown-on-failure", action="store_true", help="run stage 99 when a stage fails")
    r.add_argument("-q", "--quiet", action="store_true", help="do not stream the notebooks' cell output")
    r.add_argument("--check", action="store_true",
                   help="check mode: plan and show every step, change nothing (a new run folder of its own)")
    r.set_defaults(func=run)
    c = sub.add_parser("check-params", help="validate a parameter file, and against this host, then exit")
    c.add_argument("params")
    c.add_argument("--schema-only", action="store_true", help="check the file alone, not against this host")
    c.set_defaults(func=check_params)
    m = sub.add_parser("compare", help="put several runs' results side by side; say what makes them incomparable")
    m.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (outputs/<run-id>), two or more")
    m.add_argument("--plot", default="compare.png", help="where to write the plots (default: compare.png)")
    m.add_argument("--no-plot", action="store_true", help="print the tables only")
    m.set_defaults(func=compare)
    f = sub.add_parser("fleet", help="run the runbook on every host of an Ansible inventory, in parallel, "
                                     "with one index (helpers/fleet)")
    f.add_argument("--inventory", required=True, help="an Ansible inventory (YAML or INI, host_vars/, group_vars/)")
    f.add_argument("--params", default=str(DEFAULT_PARAMS), help="the base parameter file; each host's "
                   "`nested_nvme` variable is merged over it (default: the lab)")
    f.add_argument("--limit", help="Ansible's host pattern: only these hosts")
    f.add_argument("--forks", type=int, default=5, help="how many hosts run at once (default: 5)")
    f.add_argument("--stages", help="comma-separated stages for every host, e.g. 01 (a readiness matrix) or 99")
    f.add_argument("--from", dest="start", help="resume every host of the latest fleet from this stage on "
                   "(each from where it stopped, if later)")
    f.add_argument("--check", action="store_true", help="check mode on every host: each host's planned changes")
    f.add_argument("--fleet-id", help="the fleet's folder name under --outputs (fleet-NAME), to create or resume")
    f.add_argument("--outputs", default=str(OUTPUTS), help="where fleet folders go")
    f.add_argument("--cell-timeout", type=_positive, default=3600, help="seconds any one cell may take")
    f.set_defaults(func=fleet)
    args = ap.parse_args(argv)
    if args.cmd is None:
        print("ERROR: no command: type `python -m helpers run` (stages 01-05 on parameters/lab.yaml), "
              "`python -m helpers check-params FILE` or `python -m helpers compare RUN_DIR RUN_DIR`", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
