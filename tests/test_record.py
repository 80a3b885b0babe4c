"""The recorder (helpers.record) and the check of test_lab's test_shown_is_run (shown_is_run.py):
a step that runs what its plan shows passes; a planted mismatch of each kind is caught."""
import pytest

import shown_is_run as sir
from helpers import execute, record
from helpers.guest import Local
from helpers.steps import Action, Plan


@pytest.fixture
def recording(tmp_path, monkeypatch):
    monkeypatch.setenv(record.ENV, "t")
    record.start(tmp_path, "02")
    yield tmp_path / record.FILE
    monkeypatch.setattr(record, "_file", None)


def walk(step: str, actions: list[Action], apply) -> None:
    """What Stage.plan and Stage.apply record around a step."""
    with record.step(step, "plan"):
        Local().read(["true"])
    record.plan(step, Plan(step, actions).record())
    with record.step(step, "apply"):
        apply()
        record.applied(step)


def test_a_step_that_runs_its_plan_passes(recording, tmp_path):
    f = tmp_path / "x.raw"
    a = Action("L0", f"create {f}", [f"truncate -s 1M {f}   # sparse", f"ls -l {f}   # check: 1 MiB", "# a note"])
    walk("Prepare files", [a], lambda: execute.run_on(Local(), a))
    walk("Look", [], lambda: Local().run("uname -r"))  # a fact, run by a step that plans no change
    records = sir.load(recording, "t")
    assert f.stat().st_size == 1024 ** 2
    assert [r["cmd"] for r in records if r["kind"] == "run"] == [f"truncate -s 1M {f}", "uname -r"]  # no check, no note
    assert sir.mismatches(records) == [] and sir.applied_steps(records) == [("02", "Prepare files")]


def test_planted_mismatches_are_caught(recording, tmp_path):
    f = tmp_path / "y.raw"
    shown = Action("L0", f"create {f}", [f"qemu-img create -f raw {f} 1M"])
    walk("Backing file", [shown], lambda: Local().run(f"truncate -s 1M {f}"))  # shows one thing, runs another

    class FakeLibvirt:
        where = "libvirt at test:///default"
        uri = "test:///default"

        def destroy(self, name):
            from helpers.virt import Libvirt
            with Libvirt._changing(self, "destroy", name):
                pass
    walk("Start L1", [], lambda: FakeLibvirt().destroy("l1"))  # no change planned, libvirt changed
    bad = sir.mismatches(sir.load(recording, "t"))
    assert f"stage 02, step 'Backing file': ran 'truncate -s 1M {f}' on l0, which its plan does not show" in bad
    assert f"stage 02, step 'Backing file': its plan shows 'qemu-img create -f raw {f} 1M', which apply did not run" in bad
    assert "stage 02, step 'Start L1': planned no change but changed libvirt: virsh -c test:///default destroy l1" in bad
    assert len(bad) == 3


def test_reads_are_recorded_as_reads_and_nothing_is_recorded_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(record.ENV, raising=False)
    monkeypatch.setattr(record, "_file", None)
    record.start(tmp_path, "02")
    Local().run("true")
    assert not (tmp_path / record.FILE).exists()
    monkeypatch.setenv(record.ENV, "r")
    record.start(tmp_path, "02")
    Local().read(["test", "-e", "/"])
    Local().is_dir("/")
    rows = sir.load(tmp_path / record.FILE, "r")
    monkeypatch.setattr(record, "_file", None)
    assert [(r["kind"], r["cmd"]) for r in rows] == [("read", "test -e /"), ("read", "test -d /")]


def test_the_executor_sends_virsh_lines_to_libvirt():
    assert execute.libvirt_call("virsh -c qemu:///session define l1.xml") == ("define", "l1.xml")
    assert execute.libvirt_call("virsh start nested-l2") == ("start", "nested-l2")
    assert execute.libvirt_call("virsh list") is None and execute.libvirt_call("rm -f x") is None
    a = Action("L1", "x", ["virsh destroy l2   # it runs", "virsh dominfo l2   # check: it is defined", "# note"])
    assert execute.command_lines(a) == ["virsh destroy l2"]


def test_a_stage_error_crosses_to_the_runner_as_fields(tmp_path, monkeypatch):
    """The kernel keeps the failing step, message and HINT in the run state; the runner's summary
    reads them as they are (the same words as before), and an error kept by another stage is not used."""
    from helpers import nb, ui
    from helpers.run import diagnose
    from helpers.errors import RunbookError
    from helpers.state import State
    monkeypatch.setattr(ui, "ON_ERROR", None)
    nb._keep_errors(State(tmp_path / "state.json"), "04")
    message = "no PCI device at 0000:00:09.0: HINT: not this one"  # a message that itself says HINT
    try:
        with record.step("Choose the NVMe", "apply"):
            raise RunbookError(message, hint="look at `lspci -D` in L1")
    except RunbookError as e:
        ui.ON_ERROR(e)

    class Failed(Exception):  # papermill's error: the exception's name and text from the kernel
        ename, evalue = "RunbookError", f"{message}\nHINT: look at `lspci -D` in L1"
    got = diagnose.failure_summary("04", tmp_path / "04.ipynb", Failed(), tmp_path / "state.json")
    assert (got["error"], got["hint"], got["step"]) == (f"RunbookError: {message}", "look at `lspci -D` in L1",
                                                        "Choose the NVMe")
    other = diagnose.failure_summary("05", tmp_path / "05.ipynb", Failed(), tmp_path / "state.json")
    assert "step" not in other  # stage 05 kept nothing: the text is all there is


def test_a_planned_command_done_in_process_counts_with_what_it_ran(recording):
    a = Action("L0", "build the lab images", ["python -m helpers.lab.images   # make images"])

    def build():
        with record.part_of("python -m helpers.lab.images"):
            Local().run("true")
    walk("Lab images", [a], build)
    rows = sir.load(recording, "t")
    assert [r.get("within") for r in rows if r["kind"] == "run"] == [None, "python -m helpers.lab.images"]
    assert sir.mismatches(rows) == []
