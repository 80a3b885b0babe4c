"""The runner: stage choice, failure summary with a HINT, summary.json and report.html always written."""
import json
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.run.choice import pick_stages
from helpers.errors import RunbookError

ROOT = Path(__file__).resolve().parent.parent
AVAILABLE = {s: Path(f"{s}_x.ipynb") for s in ("01", "02", "03", "04", "05", "99")}


def test_pick_stages():
    assert pick_stages(AVAILABLE, None, None) == ["01", "02", "03", "04", "05"]
    assert pick_stages(AVAILABLE, "1,2", None) == ["01", "02"]
    assert pick_stages(AVAILABLE, None, "03") == ["03", "04", "05"]
    assert pick_stages(AVAILABLE, "99", None) == ["99"]
    with pytest.raises(RunbookError, match="no notebook for stage"):
        pick_stages(AVAILABLE, "07", None)
    with pytest.raises(RunbookError, match="cannot be used together"):
        pick_stages(AVAILABLE, "01", "02")


def _nb(path: Path, code: str, parameters: str = 'params_file = ""\nstate_file = ""\ninteractive = False'):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(parameters)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# stage\n\nWhat this stage does."), p, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _cmd(tmp_path, *args):
    return [sys.executable, "-m", "helpers", "run", "--outputs", str(tmp_path / "out"),
            "--notebooks", str(tmp_path / "nbs"), *args]


def _env(tmp_path):
    """The runner's lock in the test's own folder: a lab running meanwhile is not disturbed."""
    return {**os.environ, "NESTED_NVME_LOCK_DIR": str(tmp_path / "locks")}


def _run(tmp_path, *args):
    return subprocess.run(_cmd(tmp_path, *args), capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=_env(tmp_path))


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


# ---------------------------------------------------------------- faults: a killed, an interrupted, a second run

SLOW = ("import os, time\nfrom helpers.state import State\nState(state_file).set('slow_pid', os.getpid())\n"
        "print('waiting', flush=True)\ntime.sleep(60)\nState(state_file).set('slow_done', True)")


def _slow_stages(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir(exist_ok=True)
    _nb(d / "01_first.ipynb", "print('first ran')")
    _nb(d / "02_slow.ipynb", SLOW)
    _nb(d / "03_third.ipynb", "print('third ran')")
    return d


def _start(tmp_path, *args):
    return subprocess.Popen(_cmd(tmp_path, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_env(tmp_path))


def _wait_for_kernel(run: Path, timeout=120) -> int:
    """The pid of the slow stage's kernel, once it is in its long cell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((run / "state.json").read_text())["slow_pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.3)
    raise AssertionError("the slow stage never started")


def _gone(pid: int, timeout=15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_second_run_on_the_same_l1_is_refused_naming_the_one_that_runs(tmp_path):
    _slow_stages(tmp_path)
    first = _start(tmp_path, "--run-id", "busy")
    try:
        _wait_for_kernel(tmp_path / "out" / "busy")
        r = _run(tmp_path, "--run-id", "second")
        assert r.returncode == 2
        assert f"another run is using L1 'nested-kvm': run busy (pid {first.pid}," in r.stderr
        assert f"kill -INT {first.pid}" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "out" / "second").exists()  # refused before anything was made
    finally:
        first.kill()
        first.wait()


def test_a_killed_run_is_taken_over_its_kernel_stopped_and_its_notebook_kept(tmp_path):
    _slow_stages(tmp_path)
    first = _start(tmp_path, "--run-id", "k")
    run = tmp_path / "out" / "k"
    kernel = _wait_for_kernel(run)
    first.send_signal(signal.SIGKILL)
    first.wait()
    _nb(tmp_path / "nbs" / "02_slow.ipynb", "print('fixed')")
    r = _run(tmp_path, "--run-id", "k", "--from", "02")
    assert r.returncode == 0, r.stderr
    assert f"NOTE: took over the lock of run k (pid {first.pid}, no longer running)" in r.stdout
    # the kernel of the killed run is gone: it ends itself when its parent dies (ipykernel's
    # parent poller), and whatever is left is stopped by whoever takes the lock over
    assert _gone(kernel)
    from helpers.runlock import owned_processes
    assert owned_processes(f"nested-kvm:{first.pid}") == []  # nor stage 03's, started ahead
    assert "NOTE: stage 02's earlier attempt was killed before it ended" in r.stdout
    assert "slow_done" not in json.loads((run / "state.json").read_text())  # the orphan never went on
    s02 = next(s for s in json.loads((run / "summary.json").read_text())["stages"] if s["stage"] == "02")
    assert s02["status"] == "passed" and s02["earlier"][0]["status"] == "killed"
    assert s02["earlier"][0]["notebook"] == "02_slow.attempt-1.ipynb"
    assert "waiting" in (run / "02_slow.attempt-1.ipynb").read_text()  # the killed attempt's output is kept
    html = (run / "report.html").read_text()
    assert "stage-02-attempt-1" in html and "fixed" in html and "waiting" in html


def test_ctrl_c_stops_the_run_within_seconds_says_how_to_resume_and_resume_completes(tmp_path):
    _slow_stages(tmp_path)
    first = _start(tmp_path, "--run-id", "i")
    run = tmp_path / "out" / "i"
    kernel = _wait_for_kernel(run)
    t0 = time.monotonic()
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=30)
    assert time.monotonic() - t0 < 15
    assert first.returncode == 130 and "Traceback" not in err
    assert "INTERRUPTED at stage 02" in err and "--run-id i --from 02" in err
    assert _gone(kernel)
    from helpers.runlock import owned_processes
    assert owned_processes(f"nested-kvm:{first.pid}") == []  # nor stage 03's, started ahead
    summary = json.loads((run / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("01", "passed"), ("02", "interrupted")]
    assert json.loads((run / "state.json").read_text())["slow_pid"] == kernel  # the state is intact
    _nb(tmp_path / "nbs" / "02_slow.ipynb", "print('fixed')")
    r = _run(tmp_path, "--run-id", "i", "--from", "02")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [("01", "passed"), ("02", "passed"), ("03", "passed")]
    assert summary["status"] == "passed"


def test_a_rerun_keeps_the_earlier_attempts_notebook_and_results(tmp_path, stages_dir):
    _run(tmp_path, "--run-id", "again")
    _nb(stages_dir / "02_second.ipynb", "print('fixed')")
    _run(tmp_path, "--run-id", "again", "--from", "02")
    run = tmp_path / "out" / "again"
    assert "the disk is busy" in (run / "02_second.attempt-1.ipynb").read_text()
    assert "fixed" in (run / "02_second.ipynb").read_text()
    from helpers.bench import results
    from recorded import lab_doc
    row = {"layer": "L2", "target": "/data/f", "run": 1, "profile": "randread-4k", "iops": 1, "bw_mib_s": 1,
           "lat_p50_us": 1, "lat_p99_us": 1, "lat_p999_us": 1, "seconds": 1}
    results.write(run, lab_doc(rows=[row]))
    results.write(run, lab_doc(rows=[row]))  # the same record: nothing to keep aside
    assert not (run / "results.attempt-1.json").exists()
    results.write(run, lab_doc(rows=[{**row, "iops": 2}]))
    assert '"iops": 1' in (run / "results.attempt-1.json").read_text()
    assert '"iops": 2' in (run / "results.json").read_text()
    assert (run / "results.attempt-1.csv").exists()


# ---------------------------------------------------------------- each stage's kernel started ahead (prewarm)

# What a stage's kernel says of itself: whether the module its notebook imports was there before
# its first cell (started ahead, imports done), its arguments and folder, its execution counts.
SELF = ("import os, sys\nprint('preloaded', 'helpers.state' in sys.modules)\nprint('args', sys.argv[3:])\n"
        "print('cwd', os.getcwd())\nfrom helpers.state import State")


def _watched(tmp_path, *args) -> tuple[subprocess.CompletedProcess, list[int]]:
    """A runner invocation, and the processes of its run still there once it has exited (its
    kernels carry NESTED_NVME_OWNER=<l1>:<runner pid>): none, whatever happened."""
    from helpers.runlock import owned_processes
    p = _start(tmp_path, *args)
    out, err = p.communicate(timeout=600)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), owned_processes(f"nested-kvm:{p.pid}")


def _said(nb_path: Path) -> str:
    return "".join(o.get("text", "") for c in nbformat.read(nb_path, as_version=4).cells for o in c.get("outputs", []))


def _counts(nb_path: Path) -> list:
    return [c.execution_count for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "code"]


def test_each_next_stage_runs_in_a_kernel_started_ahead_like_papermills_and_none_is_left(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "01_first.ipynb", "print('first ran')")
    _nb(d / "02_second.ipynb", SELF)
    _nb(d / "03_third.ipynb", SELF)
    r, left = _watched(tmp_path, "--run-id", "warm")
    assert r.returncode == 0, r.stderr
    assert left == []
    run = tmp_path / "out" / "warm"
    for name in ("02_second", "03_third"):
        said = _said(run / f"{name}.ipynb")
        assert "preloaded True" in said  # imported before the notebook's first cell
        assert "args ['--IPKernelApp.log_level=ERROR', '--HistoryManager.hist_file=:memory:']" in said
        assert f"cwd {d}" in said
        assert _counts(run / f"{name}.ipynb") == [1, 2, 3]  # the silent imports counted nothing
        assert "KeyboardInterrupt" not in said and "Traceback" not in r.stderr


def test_a_kernel_started_ahead_that_died_is_replaced_by_papermills(tmp_path):
    """Stage 01 kills every other kernel of its run (stage 02's, started ahead): stage 02 still
    runs, in a kernel papermill starts (its modules not imported ahead), and passes."""
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "01_killer.ipynb", "import os, signal\nfrom helpers.runlock import owned_processes\n"
        "ahead = owned_processes(os.environ['NESTED_NVME_OWNER'])\nfor pid in ahead:\n    os.kill(pid, signal.SIGKILL)\n"
        "print('killed', len(ahead))")
    _nb(d / "02_second.ipynb", SELF)
    r, left = _watched(tmp_path, "--run-id", "died")
    assert r.returncode == 0, r.stderr
    assert left == []
    run = tmp_path / "out" / "died"
    assert "killed 1" in _said(run / "01_killer.ipynb")
    assert "preloaded False" in _said(run / "02_second.ipynb") and _counts(run / "02_second.ipynb") == [1, 2, 3]


def test_a_failed_stage_leaves_no_kernel_started_ahead(tmp_path, stages_dir):
    r, left = _watched(tmp_path, "--run-id", "f")  # 02 fails: 03's kernel was started ahead, never used
    assert r.returncode == 1 and "FAILED at stage 02" in r.stderr
    assert left == []


def test_check_mode_starts_ahead_the_next_stage_it_plans_only(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "01_first.ipynb", "print('first planned')")
    _nb(d / "02_unplannable.ipynb", "print('never in check mode')")  # takes no `mode`: skipped
    _nb(d / "03_third.ipynb", SELF + "\nprint('mode', mode)",
        parameters='params_file = ""\nstate_file = ""\ninteractive = False\nmode = "run"')
    r, left = _watched(tmp_path, "--run-id", "c", "--check")
    assert r.returncode == 0, r.stderr
    assert left == []
    run = tmp_path / "out" / "c"
    assert "02 not plannable yet: skipped" in r.stdout and not (run / "02_unplannable.ipynb").exists()
    said = _said(run / "03_third.ipynb")
    assert "preloaded True" in said and "mode check" in said


def test_a_single_stage_runs_and_leaves_no_kernel(tmp_path, stages_dir):
    r, left = _watched(tmp_path, "--run-id", "one", "--stages", "03")
    assert r.returncode == 0 and "third ran" in _said(tmp_path / "out" / "one" / "03_third.ipynb")
    assert left == []


def test_the_modules_a_notebook_imports_are_read_from_its_code_cells(tmp_path):
    from helpers.run.prewarm import notebook_imports
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("from helpers import not_code"),
                nbformat.v4.new_code_cell("import os\nfrom helpers import nb, ui\nfrom helpers.stages import build_l1"),
                nbformat.v4.new_code_cell("%time x = 1"),  # IPython syntax: skipped
                nbformat.v4.new_code_cell("import helpers.bench.compare\nfrom .rel import x\nfrom helpers.nb import *")]
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert notebook_imports(tmp_path / "n.ipynb") == [
        "helpers", "helpers.nb", "helpers.ui", "helpers.stages", "helpers.stages.build_l1", "helpers.bench.compare"]
    assert notebook_imports(tmp_path / "missing.ipynb") == []


def test_what_the_stage_notebooks_import_ahead_are_modules():
    """The imports done ahead fail silently: the real notebooks' must be modules, or nothing is gained."""
    import importlib.util
    from helpers.run.choice import stages
    from helpers.run.prewarm import notebook_imports
    for stage, template in stages().items():
        names = notebook_imports(template)
        assert "helpers.nb" in names and any(n.startswith("helpers.stages.") for n in names), (stage, names)
        assert [n for n in names if importlib.util.find_spec(n) is None] == [], stage


def _kernel_pid(km) -> int:
    return km.provisioner.pid


def test_a_kernel_started_ahead_is_not_used_for_another_notebook_a_changed_environment_or_when_dead(
        tmp_path, monkeypatch):
    from helpers.run.prewarm import WarmKernel
    a, b = tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"
    _nb(a, "print(1)")
    _nb(b, "print(2)")
    ahead = WarmKernel(a).start()
    pid = _kernel_pid(ahead.km)
    assert ahead.take(b) is None and _gone(pid, timeout=5)  # another notebook's: stopped, not used
    ahead = WarmKernel(a).start()
    pid = _kernel_pid(ahead.km)
    monkeypatch.setenv("NESTED_NVME_RECORD", "changed since")  # what the kernel inherited is no longer the runner's
    assert ahead.take(a) is None and _gone(pid, timeout=5)
    monkeypatch.delenv("NESTED_NVME_RECORD")
    ahead = WarmKernel(a).start()
    os.kill(_kernel_pid(ahead.km), signal.SIGKILL)
    t0 = time.monotonic()
    assert ahead.take(a) is None and time.monotonic() - t0 < 10  # died: not waited for to the end
    ahead = WarmKernel(a).start()
    km = ahead.take(a)
    assert km is not None and ahead.km is None  # handed over: the runner stops it after the stage
    from helpers.run.prewarm import ask_to_stop, collect
    pid = _kernel_pid(km)
    ask_to_stop(km)
    collect(km)
    assert _gone(pid, timeout=1)


def test_a_kernel_that_cannot_start_is_left_to_papermill(tmp_path, monkeypatch):
    from helpers.run import prewarm
    monkeypatch.setattr(prewarm, "KERNEL_NAME", "no-such-kernel")
    _nb(tmp_path / "01_a.ipynb", "print(1)")
    assert prewarm.WarmKernel(tmp_path / "01_a.ipynb").start() is None


def test_ctrl_c_in_a_run_raises_nothing_stops_the_runs_processes_and_a_second_exits_at_once():
    """The runner's SIGINT handler only notes the request (a KeyboardInterrupt raised inside
    importlib's lock bookkeeping was swallowed and left the run hung); the run's processes,
    even one started after Ctrl-C, are stopped; a second Ctrl-C exits 130 at once."""
    code = (
        "import os, signal, subprocess, time\n"
        "from helpers.run.ctrl_c import CtrlC\n"
        "owner = 'l1:%d' % os.getpid()\n"
        "with CtrlC(owner) as c:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    print('went on', c.requested is not None, flush=True)\n"
        "    p = subprocess.Popen(['sleep', '60'], env={**os.environ, 'NESTED_NVME_OWNER': owner})\n"
        "    t0 = time.monotonic()\n"
        "    rc = p.wait(timeout=20)\n"
        "    print('stopped', rc, time.monotonic() - t0 < 5, flush=True)\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    print('never', flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stdout + r.stderr
    assert "went on True" in r.stdout and "never" not in r.stdout
    assert "stopped -9 True" in r.stdout or "stopped -15 True" in r.stdout, r.stdout
    assert "Ctrl-C: stopping the run" in r.stderr and "second Ctrl-C: stopped at once" in r.stderr
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr


def test_after_ctrl_c_the_next_stage_is_recorded_interrupted_and_nothing_of_it_runs(tmp_path):
    """Ctrl-C between two stages: the next one is begun on record, not run, and resumable."""
    from types import SimpleNamespace
    from helpers.run.ctrl_c import CtrlC
    from helpers.run.execute_stages import StageRun
    from helpers.run.prewarm import Kernels
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "02_second.ipynb", "open('ran', 'w').write('ran')")
    run_dir = tmp_path / "out" / "r"
    run_dir.mkdir(parents=True)
    ctrl_c = CtrlC("l1:0")
    ctrl_c.requested = time.monotonic()
    args = SimpleNamespace(quiet=True, cell_timeout=60, check=False)
    run = StageRun(args, None, tmp_path / "p.yaml", {"02": d / "02_second.ipynb"}, run_dir, None, ctrl_c)
    entry = run.attempt("02", Kernels(), None)
    assert entry["status"] == "interrupted" and "before the stage began: nothing of it ran" in entry["error"]
    assert "--from 02" in entry["hint"] and run.interrupted is entry
    assert not (d / "ran").exists() and not (run_dir / "02_second.ipynb").exists()
    assert json.loads((run_dir / "summary.json").read_text())["stages"][0]["status"] == "interrupted"


def test_a_handed_kernels_client_is_closed_without_lingering():
    """The client nbclient left connected to a kernel that has exited: its channels stopped, its
    own zmq context destroyed with linger 0 (stop_channels would linger 100 ms per queued message)."""
    from helpers.run.prewarm import stop_client
    calls = []

    class Context:
        closed = False

        def destroy(self, linger=None):
            calls.append(("destroy", linger))
            self.closed = True

    class Client:
        _created_context = True
        context = Context()

        def stop_channels(self):
            calls.append(("stop_channels", self._created_context))
            if self._created_context:
                self.context.destroy(linger=100)

    stop_client(Client())
    assert calls == [("stop_channels", False), ("destroy", 0)]
