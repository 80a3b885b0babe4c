"""What every stage notebook starts with: parameters, run state, the way into
each machine, the display mode (interactive or batch) and the mode (run or check).

Rule of this layer: a notebook cell runs one step with ``ctx.step(step)``; the step's plan
is shown in every mode, and only ``Stage.step`` applies it (never in check mode)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import params as params_mod
from . import record, ui, wait
from .errors import RunbookError
from .guest import Guest, Local
from .state import State

ROOT = Path(__file__).resolve().parent.parent
NOTHING_FOR_TARGET = "no change: nvme.target is l1"  # stages 03 and 04 with the NVMe ending in L1


@dataclass
class Walk:
    """The steps a stage walked: each step class's latest plan and whether it was applied (what
    ``Stage.planned`` and ``Stage.pending`` answer from), and in the run state each plan with its
    times and waits (``steps``) and what each apply changed (``changes``), for the runner's
    summary and report and for a rerun's "no change" check."""
    plans: dict = field(default_factory=dict)  # step class -> its latest Plan in this stage
    applied: set = field(default_factory=set)  # the step classes whose latest plan was applied

    @staticmethod
    def anew(state: State, number: str) -> None:
        """Forget what an earlier walk of stage ``number`` noted: its steps are walked anew."""
        walked = state.get("steps", {})
        if walked.get(number):
            walked.pop(number)
            state.set("steps", walked)

    def add(self, ctx: Stage, step, plan, seconds: float) -> None:
        """``plan`` is ``step``'s latest, not applied; noted with how long planning took."""
        self.plans[type(step)] = plan
        self.applied.discard(type(step))
        walked = ctx.state.get("steps", {})
        walked.setdefault(ctx.number, []).append({"class": type(step).__name__, "mode": ctx.mode,
                                                  **plan.record(), "plan_s": round(seconds, 2)})
        ctx.state.set("steps", walked)

    def timed(self, ctx: Stage, seconds: float, waits: list[tuple[str, float]]) -> None:
        """Note how long the step just planned took to apply, and its waits, with its plan."""
        self._latest(ctx, apply_s=round(seconds, 2), waits=[{"what": w, "seconds": s} for w, s in waits])

    def done(self, ctx: Stage, step, result) -> None:
        """``step``'s latest plan was applied and gave ``result``: noted, with what it changed
        (so that a rerun can be checked for "no change")."""
        from .ops import Change
        self.applied.add(type(step))
        self._latest(ctx, applied=True)
        items = list(result) if isinstance(result, (list, tuple)) else [result]
        changes = [c for c in items if isinstance(c, Change)]
        if changes:
            log = ctx.state.get("changes", {})
            log.setdefault(ctx.number, {})[step.label] = [
                {"what": c.what, "changed": c.changed, "detail": c.detail} for c in changes]
            ctx.state.set("changes", log)

    def pending(self, step_cls) -> bool:
        """Planned with changes and not applied yet."""
        plan = self.plans.get(step_cls)
        return bool(plan is not None and plan.changes and step_cls not in self.applied)

    @staticmethod
    def _latest(ctx: Stage, **fields) -> None:
        """Add ``fields`` to the run state's entry of the step planned last in this stage."""
        walked = ctx.state.get("steps", {})
        if walked.get(ctx.number):
            walked[ctx.number][-1].update(fields)
            ctx.state.set("steps", walked)


@dataclass
class Stage:
    """A stage's context: ``params``, ``state`` and the guests ``l0``, ``l1()``, ``l2()``.
    ``l0`` is this machine or, with ``host.ssh``, a server over SSH (``helpers.l0``)."""

    number: str
    params_file: Path
    params: params_mod.Params
    state: State
    interactive: bool = False
    mode: str = "run"          # "run": plan, then apply each step; "check": plan and show only
    l0: Guest = field(default_factory=Local)
    started: float = field(default_factory=time.monotonic)
    seen: dict = field(default_factory=dict)  # what this stage's read-only steps read, for the later steps' plans
    walk: Walk = field(default_factory=Walk)  # each step's latest plan, and whether it was applied
    _l1_checked: bool = False

    def form(self, *sections: str):
        """Interactive runs: the parameters of ``sections`` as a form (Apply validates).
        Batch runs: nothing (the parameter file is the input)."""
        if not self.interactive:
            return None
        from .forms import ParamsForm
        f = ParamsForm(self, list(sections))
        ui._display(f.widget)
        return f

    @property
    def check(self) -> bool:
        return self.mode == "check"

    def step(self, step):
        """One step, the same in every mode; returns a ``helpers.steps.StepRun``.

        Batch: plan, show the plan, apply it, record, show the result. Interactive: a
        button; its preview is the plan, Confirm applies that same plan. Check mode: plan
        and show it; a step that would change something is never applied (a read-only
        step still reads, when its plan is known)."""
        from .steps import StepRun
        run = StepRun(step, self.mode)
        if self.interactive:
            from .forms import StepButton
            run.button = StepButton(self, step, run)
            ui._display(run.button.widget)
            return run
        run.plan = self.plan(step)
        ui.show_plan(run.plan, self.mode)
        if self.nothing_for_target(step):  # shown as such; not applied
            return run
        if run.plan.unknown:
            if not self.check:
                raise RunbookError(f"step '{step.label}' cannot go on: unknown until {run.plan.unknown}",
                                   hint="run the earlier steps (or stages) first")
            return run
        if self.check and not step.reads_only:
            return run
        if self.check:  # a read-only step that fails in check mode is shown, and the check goes on
            try:
                self.apply(step, run)
            except RunbookError as e:
                print(f"check mode: step '{step.label}' would stop a run here: {e}", flush=True)
            return run
        self.apply(step, run)
        return run

    def nothing_for_target(self, step) -> bool:
        """Stages 03 and 04 with ``nvme.target: l1``: every step but the one that says so has nothing
        to do (decided from the parameters, never from a plan's words)."""
        return self.number in ("03", "04") and not self.params.nvme.in_l2 \
            and type(step).__name__ != "NothingForTarget"

    def plan(self, step):
        """``step.plan(self)``, noted in the run state (the runner's summary lists each stage's plans).
        In check mode a step that would stop the run (its error) is planned as unknown until that
        is fixed, and the check goes on."""
        from .steps import Plan
        t0 = time.monotonic()
        try:
            with record.step(step.label, "plan"):
                if self.nothing_for_target(step):
                    plan = Plan(step.label, [], reason=f"{NOTHING_FOR_TARGET}: L1 keeps the NVMe, this step has "
                                                       "nothing to do")
                else:
                    plan = step.plan(self)
        except RunbookError as e:
            if not self.check:
                raise
            plan = Plan(step.label, [], unknown=f"this is fixed, as a run would stop here: {e.message}"
                                                + (f" (HINT: {e.hint})" if e.hint else ""))
        record.plan(step.label, plan.record())
        self.walk.add(self, step, plan, time.monotonic() - t0)
        return plan

    def apply(self, step, run) -> None:
        """Carry out ``run.plan`` (already shown), record and show the result. The time
        it took is recorded with the plan (``apply_s``), a failed apply's too, and with it
        each wait for a machine it made (``waits``: what, seconds; ``helpers.wait``)."""
        if self.nothing_for_target(step):  # stages 03/04 with target l1 (buttons too)
            return
        waited, t0 = len(wait.WAITED), time.monotonic()
        try:
            with record.step(step.label, "apply"):
                result = step.apply(self, run.plan)
                record.applied(step.label)
        finally:
            self.walk.timed(self, time.monotonic() - t0, wait.WAITED[waited:])
        run.done(result)
        self.walk.done(self, step, result)
        step.show(run.plan, result)

    def planned(self, step_cls):
        """The latest plan of an earlier step of this stage (None: not planned)."""
        return self.walk.plans.get(step_cls)

    def pending(self, step_cls) -> bool:
        """Will an earlier step still change something: planned with changes, not applied yet?"""
        return self.walk.pending(step_cls)

    def l1(self):
        """SSH into L1, as stage 02 recorded it. The first time in stages 03 to 05,
        L1 is checked to run and to answer SSH (a vanished L1 or a lost sshd is
        named as such instead of surfacing as some command's failure)."""
        from .access import check_l1, l1_guest
        if self.params.l1.lab_l2:  # the lab's L2 image as L1: no sshd, its guest agent through L0's libvirt
            from . import l0
            from .ops.l1 import l1_agent
            return l1_agent(l0.libvirt(self.params), self.params.l1.name)
        guest = l1_guest(self.params, self.state)
        if self.number in ("03", "04", "05") and not self._l1_checked:
            check_l1(self.params, guest, self.params_file, self.l0)
            self._l1_checked = True
        return guest

    def holder(self):
        """The layer that holds the NVMe: L2 (nvme.target l2, the seed's chain), or L1 (target l1)."""
        return self.l2() if self.params.nvme.in_l2 else self.l1()

    @property
    def holder_name(self) -> str:
        return "L2" if self.params.nvme.in_l2 else "L1"

    def l2(self):
        """The guest agent of L2, through L1's libvirt."""
        from .access import l2_guest
        return l2_guest(self.params, self.state, self.l1())


def _keep_errors(state: State, number: str) -> None:
    """A RunbookError that stops this stage's kernel is kept in the run state as fields (the
    stage, the step that was planned or applied, the message and the HINT), so the runner
    reads them as they are instead of from the error's text."""
    if state.get("error"):
        state.set("error", None)

    def keep(e: RunbookError) -> None:
        state.set("error", {"stage": number, "step": record.current_step(), "message": e.message, "hint": e.hint})
    ui.ON_ERROR = keep


def stage(number: str, params_file: str, state_file: str = "", interactive: bool = False,
          show_picture: bool = True, mode: str = "run") -> Stage:
    """Load and validate the parameters and the run state; set the display mode and the
    mode: "run" (each step is planned, then applied) or "check" (planned and shown only)."""
    ui.install_error_handler()
    if mode not in ("run", "check"):
        raise RunbookError(f"mode {mode!r} is not a mode: give 'run' (plan, then apply each step) "
                           "or 'check' (plan and show only, change nothing)")
    wait.INTERACTIVE = bool(interactive)
    pfile = Path(params_file)
    if not pfile.is_absolute():
        pfile = (Path.cwd() / pfile).resolve()
    try:
        p = params_mod.load(pfile)
    except params_mod.ParamsError as e:
        raise RunbookError(str(e), hint="fix the parameter file, then run the stage again") from None
    if not state_file:  # stepping through by hand: the latest run's state, or a scratch one
        latest = ROOT / "outputs" / "latest"
        state_file = str((latest if latest.exists() else ROOT / "outputs" / "interactive") / "state.json")
    record.start(Path(state_file).parent, number)
    from . import l0
    ctx = Stage(number, pfile, p, State(state_file), bool(interactive), mode, l0=l0.guest(p))
    _keep_errors(ctx.state, number)
    Walk.anew(ctx.state, number)
    print(f"stage {number}: parameters {pfile.name} ({p.name}), state {state_file}"
          + (" - check mode: every step is planned and shown, nothing is changed" if mode == "check" else ""))
    if show_picture:
        ui.picture(number)
    return ctx
