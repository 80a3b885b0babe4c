"""Interactive runs, without a browser: forms validate like batch runs, buttons run
the same helpers (changing steps only after Confirm), and papermill shows no widget."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import nb
from helpers.stages import teardown
from helpers.steps import Step

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lab_params(tmp_path):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["nvme"]["backing_file"] = str(tmp_path / "work" / "nvme.raw")
    data["l1"]["name"] = "widget-test-l1"
    data["l1"]["network"]["ssh_port"] = 2299
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def stage(lab_params, tmp_path, number="99"):
    return nb.stage(number, str(lab_params), str(tmp_path / "state.json"), interactive=True, show_picture=False)


def test_form_is_prefilled_and_applies_valid_values(lab_params, tmp_path):
    ctx = stage(lab_params, tmp_path)
    form = ctx.form("l1", "nvme")
    cores, _ = form.fields[("l1", "cores")]
    assert cores.value == 2
    cores.value = 3
    form.fields[("nvme", "size_gib")][0].value = 2.0
    form.apply_button.click()
    assert ctx.params.l1.cores == 3 and ctx.params.nvme.size_gib == 2.0
    assert "applied" in form.message.value


def test_form_refuses_with_the_schemas_message(lab_params, tmp_path):
    ctx = stage(lab_params, tmp_path)
    form = ctx.form("l1")
    form.fields[("l1", "memory_mib")][0].value = 100
    form.apply_button.click()
    assert "l1.memory_mib" in form.message.value and "greater than or equal to 512" in form.message.value
    assert ctx.params.l1.memory_mib == 2048  # unchanged


def test_a_changing_step_waits_for_confirm_then_runs_the_same_helper(lab_params, tmp_path):
    ctx = stage(lab_params, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    leftover = work / "known_hosts"
    leftover.write_text("x")
    run = ctx.step(teardown.RemoveFiles())
    button = run.button
    button.button.click()
    assert leftover.exists() and button.calls == 0  # only the preview (the plan) so far
    assert button.confirm.layout.display == "" and f"rm -f {leftover}" in button.preview
    button.confirm.click()
    assert not leftover.exists() and button.calls == 1 and run.applied
    recorded = json.loads((tmp_path / "state.json").read_text())["changes"]["99"]["Remove files"]
    assert any(c["changed"] and "known_hosts" in c["what"] for c in recorded)


def test_a_read_only_step_runs_on_one_click(lab_params, tmp_path):
    ctx = stage(lab_params, tmp_path)
    calls = []

    class Look(Step):
        label, reads_only = "Look", True

        def plan(self, ctx):
            return self.reads("nothing")

        def apply(self, ctx, plan):
            calls.append(1)
            return "seen"
    run = ctx.step(Look())
    run.button.button.click()
    assert calls == [1] and run.result == "seen"


def _execute(path, interactive: bool, tmp_path, lab_params):
    out = tmp_path / f"out-{interactive}.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(path), str(out), "-p", "params_file", str(lab_params),
                    "-p", "state_file", str(tmp_path / "s.json"), "-p", "interactive", str(interactive)],
                   check=True, capture_output=True, cwd=ROOT / "notebooks", timeout=300)
    return json.loads(out.read_text())


WIDGET = "application/vnd.jupyter.widget-view+json"


def _widgets(nbjson):
    return [o for c in nbjson["cells"] for o in c.get("outputs", []) if WIDGET in o.get("data", {})]


def test_papermill_batch_shows_no_widget_and_interactive_shows_buttons(tmp_path, lab_params):
    path = ROOT / "notebooks" / "99_teardown.ipynb"
    batch = _execute(path, False, tmp_path, lab_params)
    assert _widgets(batch) == []
    inter = _execute(path, True, tmp_path, lab_params)
    assert len(_widgets(inter)) >= 4  # the form and a button per step
    state = json.loads((tmp_path / "s.json").read_text())
    assert "99" in state["changes"]  # the batch run did the steps (nothing to remove: no change)
    assert all(not c["changed"] for step in state["changes"]["99"].values() for c in step)


@pytest.mark.parametrize("name", ["02_build_l1", "04_build_l2", "05_verify_benchmark", "99_teardown"])
def test_an_interactive_stage_changes_nothing_until_a_button_is_pressed(tmp_path, lab_params, name):
    """Every step is a button: executing the notebook interactively builds nothing, writes no
    state and no file (before issue 14 stage 02 built the images and read L1 at once)."""
    from helpers.stages import build_l1, build_l2, teardown as td, verify_benchmark
    steps = {"02_build_l1": build_l1, "04_build_l2": build_l2, "05_verify_benchmark": verify_benchmark,
             "99_teardown": td}[name].STEPS
    inter = _execute(ROOT / "notebooks" / f"{name}.ipynb", True, tmp_path, lab_params)
    assert len(_widgets(inter)) == 1 + len(steps)  # the form and one button per step
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "work").exists()
