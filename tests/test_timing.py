"""Every step's time on record: Stage.plan/apply time each step and its waits for a machine,
the runner copies them into summary.json, and the report's table and bar chart and bench's
text lines read them from there."""
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from helpers import nb, report, timing, wait
from helpers.run import attempts
from helpers.errors import RunbookError
from helpers.ops import did
from helpers.steps import Action, Plan, Step

ROOT = Path(__file__).resolve().parent.parent


class Boot(Step):
    """A fake changing step that waits for a 'machine' (a file that appears)."""
    label = "Boot the machine"

    def __init__(self, flag: Path, plan_for: float = 0.0, fail: bool = False):
        self.flag, self.plan_for, self.fail = flag, plan_for, fail

    def plan(self, ctx):
        time.sleep(self.plan_for)
        return Plan(self.label, [Action("L0", "boot", ["virsh start m"])])

    def apply(self, ctx, plan):
        t0 = time.monotonic()
        wait.wait_for(lambda: time.monotonic() - t0 > 0.3, "m: guest agent", 5, interval=0.05)
        if self.fail:
            raise RunbookError("m did not come up", hint="read its console")
        return [did("boot m")]


@pytest.fixture
def ctx(tmp_path):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["nvme"]["backing_file"] = str(tmp_path / "work" / "nvme.raw")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    return nb.stage("02", str(f), str(tmp_path / "state.json"), show_picture=False)


def walked(tmp_path):
    return json.loads((tmp_path / "state.json").read_text())["steps"]["02"]


def test_a_step_records_its_plan_apply_and_waits(ctx, tmp_path):
    ctx.step(Boot(tmp_path / "f", plan_for=0.2))
    [w] = walked(tmp_path)
    assert 0.2 <= w["plan_s"] < 0.3 + 0.5
    assert w["apply_s"] >= 0.3 and w["applied"]
    [waited] = w["waits"]
    assert waited["what"] == "m: guest agent" and 0.3 <= waited["seconds"] <= w["apply_s"]


def test_a_failed_apply_keeps_its_time(ctx, tmp_path):
    with pytest.raises(RunbookError, match="did not come up"):
        ctx.step(Boot(tmp_path / "f", fail=True))
    [w] = walked(tmp_path)
    assert w["apply_s"] >= 0.3 and not w.get("applied") and w["waits"][0]["what"] == "m: guest agent"


def test_check_mode_times_the_plan_and_applies_nothing(tmp_path):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["nvme"]["backing_file"] = str(tmp_path / "work" / "nvme.raw")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    ctx = nb.stage("02", str(tmp_path / "p.yaml"), str(tmp_path / "state.json"), show_picture=False, mode="check")
    ctx.step(Boot(tmp_path / "f"))
    [w] = walked(tmp_path)
    assert w["plan_s"] >= 0 and "apply_s" not in w
    [entry] = attempts.stage_steps(tmp_path / "state.json", "02")
    assert entry["plan_seconds"] == w["plan_s"] and "apply_seconds" not in entry


def test_the_runner_copies_the_times_into_the_summary(ctx, tmp_path):
    ctx.step(Boot(tmp_path / "f"))
    [entry] = attempts.stage_steps(tmp_path / "state.json", "02")
    w = walked(tmp_path)[0]
    assert entry["plan_seconds"] == w["plan_s"] and entry["apply_seconds"] == w["apply_s"]
    assert entry["wait_seconds"] == w["waits"][0]["seconds"] and entry["waits"] == w["waits"]


SUMMARY = {"run_id": "r", "status": "passed", "stages": [
    {"stage": "02", "notebook": "02_build_l1.ipynb", "status": "passed", "seconds": 30.0, "steps": [
        {"step": "Lab images", "plan_seconds": 0.5, "apply_seconds": 1.5, "wait_seconds": 0.0, "waits": []},
        {"step": "Start L1", "plan_seconds": 0.25, "apply_seconds": 22.0, "wait_seconds": 20.0,
         "waits": [{"what": "nested-kvm: guest agent", "seconds": 20.0}]},
        {"step": "Not timed (an older run)", "plan": "no change"}]},
    {"stage": "03", "notebook": "03_configure_l1.ipynb", "status": "passed", "seconds": 10.0, "steps": [
        {"step": "Reboot L1", "plan_seconds": 0.0, "wait_seconds": 0.0}]},
]}


def test_stage_table_lists_each_timed_step_and_the_rest():
    table = timing.stage_table(SUMMARY["stages"][0])
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 1 + 2 + 1  # header, two timed steps, the rest
    assert "<td>Start L1</td><td>0.2 s</td><td>22.0 s</td><td>20.0 s</td><td>nested-kvm: guest agent 20.0 s</td>" in rows[2]
    assert "outside the steps" in rows[3] and "<td colspan='4'>5.8 s</td>" in rows[3]  # 30 - (2.0 + 22.25)
    assert "not applied" in timing.stage_table(SUMMARY["stages"][1])
    assert timing.stage_table({"stage": "01", "seconds": 1.0, "steps": []}) == ""


def test_bar_chart_splits_each_stage_into_waiting_work_and_the_rest():
    svg = timing.bar_chart(SUMMARY, width=560)
    widths = {t: float(w) for w, t in re.findall(r"width='([\d.]+)' height='18' fill='[^']+'><title>([^<]+)</title>", svg)}
    scale = (560 - 90 - 70) / 30.0
    assert widths["stage 02: waiting for a machine 20.0 s"] == pytest.approx(20 * scale, abs=0.1)
    assert widths["stage 02: planning and applying 4.2 s"] == pytest.approx(4.25 * scale, abs=0.1)
    assert widths["stage 03: outside the steps 10.0 s"] == pytest.approx(10 * scale, abs=0.1)
    assert "30.0 s</text>" in svg and timing.bar_chart({"stages": []}) == ""


def test_report_shows_the_chart_the_slowest_steps_and_each_stage_table(tmp_path):
    notebook = report.combined_notebook(tmp_path, SUMMARY)
    top, stage02 = notebook.cells[0].source, notebook.cells[1].source
    assert "Where the time went" in top and "<svg class='runbook-time-chart'" in top
    assert top.index("Start L1") < top.index("Lab images")  # slowest first
    assert "where the time went: step" in stage02 and "nested-kvm: guest agent" in stage02


def test_text_lines_for_the_bench():
    lines = timing.text_lines(SUMMARY, "cold-")
    assert "cold-step 02 'Start L1': plan 0.2 s, apply 22.0 s, of which waiting 20.0 s (nested-kvm: guest agent 20.0 s)" in lines
    assert "cold-step 02 'Lab images': plan 0.5 s, apply 1.5 s" in lines
    assert any(line.startswith("cold-step 02 (outside the steps") and line.endswith("5.8 s") for line in lines)
    assert "cold-step 03 'Reboot L1': plan 0.0 s, apply not applied" in lines
    assert [t.step for t in timing.slowest(SUMMARY, 2)] == ["Start L1", "Lab images"]
