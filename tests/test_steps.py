"""The Step framework with fake steps: every mode walks the same step; check mode never
applies a changing step; the interactive preview is the plan and Confirm applies that plan."""
import json
from pathlib import Path

import pytest
import yaml

from helpers import l0 as l0_mod
from helpers import nb, ui
from helpers.errors import RunbookError
from helpers.ops import did
from helpers.steps import Action, Plan, Step, StepRun

ROOT = Path(__file__).resolve().parent.parent


class Touch(Step):
    """A fake changing step: creates a file; plans no change when it exists."""
    label = "Touch the file"

    def __init__(self, path: Path):
        self.path, self.plans, self.applied = path, 0, []

    def plan(self, ctx):
        self.plans += 1
        if self.path.exists():
            return self.no_change(f"{self.path} exists")
        return Plan(self.label, [Action("L0", f"create {self.path}", [f"touch {self.path}"], content="")],
                    data=self.path)

    def apply(self, ctx, plan):
        self.applied.append(plan)
        for _ in plan.actions:
            plan.data.write_text("")
        return [did(f"create {plan.data}")] if plan.actions else []


class Look(Step):
    label = "Look"
    reads_only = True

    def __init__(self, there: bool = True):
        self.there, self.applied = there, 0

    def plan(self, ctx):
        return self.reads("ls /") if self.there else self.unknown("L1 is built (stage 02)")

    def apply(self, ctx, plan):
        self.applied += 1
        return "seen"


@pytest.fixture
def params(tmp_path):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["nvme"]["backing_file"] = str(tmp_path / "work" / "nvme.raw")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def ctx_for(params, tmp_path, mode="run", interactive=False):
    return nb.stage("02", str(params), str(tmp_path / "state.json"), interactive=interactive,
                    show_picture=False, mode=mode)


def test_batch_plans_shows_applies_and_records(params, tmp_path, capsys):
    ctx = ctx_for(params, tmp_path)
    step = Touch(tmp_path / "f")
    run = ctx.step(step)
    assert isinstance(run, StepRun) and run.applied and (tmp_path / "f").exists()
    assert step.applied == [run.plan] and run.plan.changes  # apply got the very plan that was shown
    out = capsys.readouterr().out
    assert "Plan of 'Touch the file': 1 change" in out and f"[root@L0] ~$ touch {tmp_path / 'f'}" in out
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["steps"]["02"][0]["class"] == "Touch" and state["steps"]["02"][0]["applied"]
    again = ctx.step(Touch(tmp_path / "f"))
    assert not again.plan.changes and again.plan.reason == f"no change: {tmp_path / 'f'} exists"


def test_check_mode_never_applies_a_changing_step(params, tmp_path, capsys):
    ctx = ctx_for(params, tmp_path, mode="check")
    step = Touch(tmp_path / "f")
    run = ctx.step(step)
    assert not run.applied and step.applied == [] and not (tmp_path / "f").exists()
    assert run.plan.changes
    with pytest.raises(RunbookError, match="only planned \\(check mode\\)"):
        run.result
    assert "check mode: nothing is changed" in capsys.readouterr().out


def test_check_mode_reads_when_it_can_and_says_unknown_otherwise(params, tmp_path, capsys):
    ctx = ctx_for(params, tmp_path, mode="check")
    look = Look()
    assert ctx.step(look).result == "seen" and look.applied == 1
    blind = Look(there=False)
    run = ctx.step(blind)
    assert not run.applied and blind.applied == 0 and run.plan.unknown
    assert "unknown until L1 is built (stage 02)" in capsys.readouterr().out


def test_run_mode_refuses_a_step_it_cannot_plan(params, tmp_path):
    ctx = ctx_for(params, tmp_path)
    with pytest.raises(RunbookError, match="cannot go on: unknown until L1 is built"):
        ctx.step(Look(there=False))


def test_a_bad_mode_is_refused(params, tmp_path):
    with pytest.raises(RunbookError, match="'dry' is not a mode"):
        ctx_for(params, tmp_path, mode="dry")


def test_interactive_preview_is_the_plan_and_confirm_applies_that_plan(params, tmp_path):
    ctx = ctx_for(params, tmp_path, interactive=True)
    target = tmp_path / "f"
    step = Touch(target)
    run = ctx.step(step)
    assert run.plan is None and not run.applied  # nothing planned nor done before the click
    with pytest.raises(RunbookError, match="not been applied yet"):
        run.result
    run.button.button.click()
    assert not target.exists() and step.applied == [] and run.button.confirm.layout.display == ""
    assert run.button.preview == ui.plan_text(run.plan)
    assert f"touch {target}" in run.button.preview
    shown = run.plan
    run.button.confirm.click()
    assert target.exists() and step.applied == [shown] and step.plans == 1  # the plan shown, not a new one
    assert run.applied and run.result[0].changed


class Shown(Touch):
    """Touch, noting what its show is given."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.shown = []

    def show(self, plan, result):
        self.shown.append((plan, result))


def test_show_is_given_the_plan_applied_and_its_result_in_a_batch_and_on_confirm(params, tmp_path):
    step = Shown(tmp_path / "f")
    run = ctx_for(params, tmp_path).step(step)
    assert step.shown == [(run.plan, run.result)] and step.shown[0][0] is step.applied[0]
    step = Shown(tmp_path / "g")
    run = ctx_for(params, tmp_path, interactive=True).step(step)
    run.button.button.click()
    assert step.shown == []  # nothing applied before Confirm, nothing shown
    run.button.confirm.click()
    assert step.shown == [(run.plan, run.result)] and step.shown[0][0] is step.applied[0]


def test_interactive_read_only_step_runs_on_one_click_and_check_mode_has_no_confirm(params, tmp_path):
    ctx = ctx_for(params, tmp_path, interactive=True)
    run = ctx.step(Look())
    run.button.button.click()
    assert run.result == "seen"
    check = ctx_for(params, tmp_path, mode="check", interactive=True)
    step = Touch(tmp_path / "g")
    run = check.step(step)
    run.button.button.click()
    assert run.plan.changes and run.button.confirm.layout.display == "none" and not run.applied


def test_plan_text_shows_machine_commands_content_and_reasons():
    p = Plan("Define L1", [Action("L0", "define nested-kvm", ["virsh define nested-kvm.xml"], "<domain/>")])
    text = ui.plan_text(p)
    assert "1. [L0] define nested-kvm" in text and "[root@L0] ~$ virsh define nested-kvm.xml" in text
    assert "<domain/>" in text and "data-plan='change'" in ui.plan_html(p)
    assert ui.plan_text(Plan("x", reason="no change: it runs")).endswith(": no change: it runs")
    assert "unknown until L1 runs" in ui.plan_text(Plan("x", unknown="L1 runs"))
    assert Plan("x", unknown="L1 runs").summary() == "unknown until L1 runs"


# --- each stage notebook walks exactly its module's STEPS ------------------------------------

import ast  # noqa: E402

import nbformat  # noqa: E402

from helpers.stages import build_l1, build_l2, check_host, configure_l1, teardown, verify_benchmark  # noqa: E402
from helpers.steps import walk_names  # noqa: E402

STAGE_MODULES = {"01_check_host": check_host, "02_build_l1": build_l1, "03_configure_l1": configure_l1,
                 "04_build_l2": build_l2, "05_verify_benchmark": verify_benchmark, "99_teardown": teardown}


def notebook_steps(path: Path) -> list[str]:
    """The step classes the notebook's cells pass to ctx.step(...), in order; one per cell."""
    found = []
    for c in nbformat.read(path, as_version=4).cells:
        if c.cell_type != "code":
            continue
        calls = [n for n in ast.walk(ast.parse(c.source)) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "step"]
        assert len(calls) <= 1, f"{path.name}: one step per cell:\n{c.source}"
        for call in calls:
            found.append(call.args[0].func.attr)
    return found


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_each_stage_notebook_walks_its_modules_steps_in_order(name):
    module = STAGE_MODULES[name]
    assert notebook_steps(ROOT / "notebooks" / f"{name}.ipynb") == walk_names(module.STEPS)
    for s in module.STEPS:
        assert issubclass(s, Step) and s.label, s
    src = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
    assert "preview=" not in src and "ctx.do(" not in src  # the plan is the preview


@pytest.mark.parametrize("name", sorted(STAGE_MODULES))
def test_each_stage_step_keeps_nothing_on_itself(name):
    """Steps are stateless between plan, apply and show: none sets an attribute on itself (what
    show needs is in the plan or in the result)."""
    import inspect
    import textwrap
    for s in STAGE_MODULES[name].STEPS:
        tree = ast.parse(textwrap.dedent(inspect.getsource(s)))
        kept = [ast.unparse(t) for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                for t in ast.walk(t)
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"]
        kept += [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "setattr"]
        assert not kept, f"{s.__name__} keeps {kept} on itself"


def test_check_mode_on_a_cold_host_plans_stage_02_without_changing_anything(params, tmp_path, monkeypatch):
    """Stage 02's steps in check mode against fakes of libvirt and the image cache: every plan
    is made, a changing one is never applied, and nothing appears on disk."""
    from helpers.lab import images
    from helpers.stages import build_l1 as b

    class FakeLibvirt:
        where = "fake:///"

        def __init__(self, uri=None):
            pass

        def lib_version(self):
            return 11_003_000

        def inactive_xml(self, name):
            return None

        def is_active(self, name):
            return False

    monkeypatch.setattr(l0_mod, "libvirt", lambda p: FakeLibvirt(p.host.libvirt_uri))
    monkeypatch.setattr(images, "load_images", lambda *a, **k: None)
    applied = []
    for cls in b.STEPS:
        real = cls.apply
        monkeypatch.setattr(cls, "apply", lambda self, ctx, plan, _r=real: applied.append(self.label) or _r(self, ctx, plan))
    ctx = ctx_for(params, tmp_path, mode="check")
    ctx.state.set("accel", "tcg")
    runs = [ctx.step(cls()) for cls in b.STEPS]
    plans = {r.step.label: r.plan for r in runs}
    assert plans["Lab images"].changes and "build the lab images" in plans["Lab images"].actions[0].what
    assert plans["Prepare files"].unknown == b.IMAGES_UNKNOWN
    assert plans["Define L1"].changes and "<domain" in plans["Define L1"].actions[0].content
    assert plans["Start L1"].actions[0].commands[0] == "virsh start nested-kvm"
    assert "<iommu model=\"intel\">" in runs[1].result.xml  # the read-only step ran: L1's definition
    assert plans["Wait for L1"].unknown and plans["Look inside L1"].unknown
    # the read-only steps that could plan (with the emulated NVMe the host-NVMe steps only say so); no changing step
    assert applied == ["L1's definition", "Prove the NVMe of L0 free again", "L0 gave the NVMe to L1"]
    assert not (tmp_path / "work").exists()


def test_a_run_of_stages_03_to_05_names_what_happened_to_l1_instead_of_unknown(params, monkeypatch):
    """L1 destroyed behind the runbook's back: a run says so (access.check_l1 through ctx.l1()),
    check mode plans 'unknown until L1 runs'."""
    from types import SimpleNamespace

    from helpers.stages import build_l1

    class Down:
        def is_active(self, name):
            return False

    monkeypatch.setattr(l0_mod, "libvirt", lambda p: Down())

    def l1():
        raise RunbookError("L1 (nested-kvm) is not running: shut off (destroyed); it was stopped outside the runbook")
    from helpers import params as params_mod
    loaded = params_mod.load(params)
    run = SimpleNamespace(params=loaded, check=False, number="04", l1=l1)
    with pytest.raises(RunbookError, match=r"shut off \(destroyed\); it was stopped outside the runbook"):
        build_l1.l1_not_up(run)
    check = SimpleNamespace(params=loaded, check=True, number="04", l1=l1)
    assert build_l1.l1_not_up(check) == "L1 (nested-kvm) runs (stage 02 starts it)"
    stage02 = SimpleNamespace(params=loaded, check=False, number="02", l1=l1)
    assert build_l1.l1_not_up(stage02).startswith("L1 (")
