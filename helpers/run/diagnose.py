"""What failed, and why: a failing stage's summary (the step, message and HINT it
recorded, else papermill's error) and, when L1 is the cause, what happened to it
(stopped outside the runbook, SSH lost, its vCPUs stalled)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import RunbookError
from ..params import Params


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


def explain_l1(failed: dict, p: Params, state_file: Path | None = None) -> None:
    """Name what happened to L1 when a stage failed because of it: L1 stopped outside
    the runbook, SSH into it lost, or its vCPUs stalled (the failing command was
    their victim), read off L1's console or, after stage 03, from L1 no longer
    answering at all."""
    from ..access import back_from_02, l1_guest, l1_not_running, l1_silent, l1_ssh_lost, l1_stall
    from ..state import State
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
        if stall.startswith("Kernel panic"):
            from ..paths import paths
            failed["error"] = f"L1's kernel panicked (its console: {stall!r}); {failed['error']}"
            failed["hint"] = (f"the trace is at the end of L1's console log, {paths(p).l1_console} (under TCG "
                              "emulation, with KVM inside L1, a known hazard of the lab); tear down with "
                              "`--stages 99` and run again")
        else:
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
