"""The runner: stage choice, failure summary with a HINT, summary.json and report.html always written."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import runner
from helpers.errors import RunbookError

ROOT = Path(__file__).resolve().parent.parent
AVAILABLE = {s: Path(f"{s}_x.ipynb") for s in ("01", "02", "03", "04", "05", "99")}


def test_pick_stages():
    assert runner.pick_stages(AVAILABLE, None, None) == ["01", "02", "03", "04", "05"]
    assert runner.pick_stages(AVAILABLE, "1,2", None) == ["01", "02"]
    assert runner.pick_stages(AVAILABLE, None, "03") == ["03", "04", "05"]
    assert runner.pick_stages(AVAILABLE, "99", None) == ["99"]
    with pytest.raises(RunbookError, match="no notebook for stage"):
        runner.pick_stages(AVAILABLE, "07", None)
    with pytest.raises(RunbookError, match="cannot be used together"):
        runner.pick_stages(AVAILABLE, "01", "02")


def _nb(path: Path, code: str):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('params_file = ""\nstate_file = ""\ninteractive = False')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# stage\n\nWhat this stage does."), p, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "helpers", "run", "--outputs", str(tmp_path / "out"),
                           "--notebooks", str(tmp_path / "nbs"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture
def stages_dir(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "01_first.ipynb", "from helpers.state import State\nState(state_file).set('first', 1)\nprint('first ran')")
    _nb(d / "02_second.ipynb", "from helpers.errors import RunbookError\n"
        "raise RunbookError('the disk is busy', hint='unmount it and resume with --from 02')")
    _nb(d / "03_third.ipynb", "print('third ran')")
    return d


def test_a_failing_stage_stops_the_run_with_a_hint(tmp_path, stages_dir):
    r = _run(tmp_path, "--run-id", "r1")
    assert r.returncode == 1
    assert "FAILED at stage 02" in r.stderr and "RunbookError: the disk is busy" in r.stderr
    assert "HINT: unmount it and resume with --from 02" in r.stderr
    assert "Traceback" not in r.stderr
    run = tmp_path / "out" / "r1"
    summary = json.loads((run / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["passed", "failed"]
    failed = summary["stages"][1]
    assert failed["cell"] == 3 and "RunbookError" in failed["cell_source"] and failed["hint"] == "unmount it and resume with --from 02"
    assert not (run / "03_third.ipynb").exists()
    assert json.loads((run / "state.json").read_text())["first"] == 1
    html = (run / "report.html").read_text()
    assert "stage-01" in html and "stage-02" in html and "the disk is busy" in html
    # the templates are untouched
    assert not nbformat.read(stages_dir / "01_first.ipynb", as_version=4).cells[2].get("outputs")


def test_resume_from_a_stage_reuses_the_run(tmp_path, stages_dir):
    _run(tmp_path, "--run-id", "r2")
    _nb(stages_dir / "02_second.ipynb", "print('fixed')")
    r = _run(tmp_path, "--from", "02")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "r2" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["01", "02", "03"] and summary["status"] == "passed"


def test_a_later_invocation_does_not_hide_an_earlier_failure(tmp_path, stages_dir):
    _run(tmp_path, "--run-id", "r3")
    r = _run(tmp_path, "--run-id", "r3", "--stages", "03")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "r3" / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("01", "passed"), ("02", "failed"), ("03", "passed")]
    assert summary["status"] == "failed"


def test_bad_parameters_are_refused_before_anything_runs(tmp_path, stages_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("l1:\n  cores: many\n")
    r = _run(tmp_path, "--params", str(bad))
    assert r.returncode == 2 and "l1.cores" in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.host
def test_stage_01_runs_for_real_through_the_runner(tmp_path):
    r = subprocess.run([sys.executable, "-m", "helpers", "run", "--stages", "01", "--outputs", str(tmp_path),
                        "--run-id", "real"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = tmp_path / "real"
    assert (run / "01_check_host.ipynb").exists() and (run / "report.html").exists()
    state = json.loads((run / "state.json").read_text())
    assert state["accel"] == "tcg" and "kvm_pvm" in state["host"]["accel_reason"]
    nb = nbformat.read(run / "01_check_host.ipynb", as_version=4)
    text = json.dumps(nb)
    assert "KVM usable" in text or "KVM" in text
