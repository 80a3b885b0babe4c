"""results.json standing on its own (version, schema, environment), and comparing runs."""
import copy
import json
import shutil
from pathlib import Path

import pytest

from helpers import checks
from helpers.run import choice, cli
from helpers.bench import compare, fio, results
from helpers.errors import RunbookError
from helpers.facts import system as system_facts
from hosts import host
from recorded import LAB_PARAMS, LAB_RUN, lab_doc, real_doc, state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def agg():
    import matplotlib
    matplotlib.use("Agg")


# --- the environment, read by the checks ---------------------------------------------------

def test_kernel_release_is_read_from_proc():
    assert system_facts.kernel_release(host("lab-l1")) == "6.1.0-56-amd64"
    assert system_facts.kernel_release(host("amd-epyc")) is None  # not recorded there: None, no error


def test_environment_of_the_lab_l1_from_its_facts():
    from test_facts_checks import lab_params
    env = checks.environment(checks.gather(host("lab-l1"), lab_params(), "l1"))
    assert env == {"kernel": "6.1.0-56-amd64", "qemu": "7.2.22", "libvirt": "9.0.0",
                   "cpu_model": "QEMU TCG CPU version 2.5+", "cpu_vendor": env["cpu_vendor"],
                   "distro": env["distro"], "virtualized": True}
    assert "Debian" in env["distro"]


# --- the document ---------------------------------------------------------------------------

def test_document_says_what_was_verified_where_and_in_which_environment():
    doc = results.validate(lab_doc())
    assert doc["version"] == results.VERSION
    l2 = doc["nvme"]["in_l2"]
    assert l2["controller"] == {"bdf": "0000:00:02.0", "vendor_device": "1b36:0010", "class": "0108",
                                "lspci": l2["controller"]["lspci"]}
    assert l2["namespace"]["model"] == "QEMU NVMe Ctrl" and l2["namespace"]["serial"] == "1234"
    assert l2["namespace"]["size_bytes"] == 1024 ** 3 and l2["namespace"]["block_size"] == 512
    assert l2["filesystem"]["mounted"] and l2["filesystem"]["df"]["type"] == "xfs"
    assert l2["filesystem"]["mkfs"].startswith("formatted")
    l1 = doc["nvme"]["in_l1"]
    assert (l1["bdf"], l1["iommu_group"], l1["driver_after"]) == ("0000:00:04.0", 5, "vfio-pci")
    assert {k: v["accel"] for k, v in doc["layers"].items()} == {"L0": "none", "L1": "tcg", "L2": "kvm"}
    # a state recorded before version 2: L2 measured a file of its XFS then, and its rows say so
    assert doc["layers"]["L2"]["fio_targets"] == {"file": "/data/fio-bench.bin"}
    assert {(r["layer"], r["target_kind"]) for r in doc["runs"]} >= {("L1", "namespace"), ("L2", "file")}
    assert doc["environment"]["L0"]["kernel"] and doc["environment"]["L1"]["qemu"] == "7.2.22"
    assert doc["fio"]["profiles"] == ["randread-4k", "seqread-128k", "randwrite-4k"]
    assert doc["fio"]["runtime_s"] == 0.5 and doc["fio"]["repeats"] == 4
    assert doc["fio"]["jobs"]["randread-4k"] == {"rw": "randread", "bs": "4k", "iodepth": 32}


def test_a_real_runs_state_gives_a_valid_document_with_the_same_figures():
    doc = results.validate(real_doc())
    before = json.loads((LAB_RUN / "results-unversioned.json").read_text())
    # the same fio figures, each row now naming its target kind, accelerator and IOMMU mode
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("target_kind", "accel", "iommu")} for r in rows]  # noqa: E731
    assert strip(doc["runs"]) == before["runs"]
    assert [(s["layer"], s["profile"], s["iops_mean"]) for s in doc["summary"]] == \
        [(s["layer"], s["profile"], s["iops_mean"]) for s in before["summary"]]
    assert doc["run"]["id"] == "lab-run" and doc["run"]["started"] == "2026-12-03T12:29:07"
    assert doc["nvme"]["in_l2"]["controller"]["vendor_device"] == "1b36:0010"
    assert doc["nvme"]["in_l2"]["namespace"]["size_bytes"] == 1024 ** 3
    assert (doc["nvme"]["in_l1"]["bdf"], doc["nvme"]["in_l1"]["iommu_group"]) == ("0000:00:10.0", 6)
    assert {k: v["accel"] for k, v in doc["layers"].items()} == {"L0": "none", "L1": "tcg", "L2": "kvm"}
    # recorded before the checks kept the environment: every field there, unknown
    assert set(doc["environment"]["L1"].values()) == {None}


def test_a_real_runs_results_json_of_before_versions_is_refused():
    with pytest.raises(RunbookError, match="has no version: it was written before results had one"):
        results.load(LAB_RUN / "results-unversioned.json")


def test_run_info_hashes_the_parameter_file_and_reads_the_start(tmp_path):
    import hashlib
    (tmp_path / "summary.json").write_text(json.dumps({"started": "2026-12-03T12:29:01"}))
    run = results.run_info(tmp_path, LAB_PARAMS, "lab", results_written())
    assert run["id"] == tmp_path.name and run["started"] == "2026-12-03T12:29:01"
    assert run["params"] == {"file": "lab.yaml", "name": "lab",
                             "sha256": hashlib.sha256(LAB_PARAMS.read_bytes()).hexdigest()}
    assert results.run_info(tmp_path / "by-hand", LAB_PARAMS, "lab", results_written())["started"] is None


def results_written():
    from recorded import WRITTEN
    return WRITTEN


def test_a_state_from_before_the_environment_was_recorded_still_gives_a_valid_document():
    st = state()
    for key in ("environment", "l2_verify", "nvme", "bench_l0"):
        st.pop(key)
    doc = results.validate(lab_doc(st))
    assert doc["environment"]["L1"]["qemu"] is None and doc["nvme"]["in_l2"]["filesystem"]["df"] is None
    assert doc["layers"]["L0"]["fio_targets"] == {}


def test_write_checks_the_schema_and_keeps_the_csv(tmp_path):
    doc = lab_doc()
    files = results.write(tmp_path, doc)
    assert results.load(tmp_path) == json.loads(files["json"].read_text())
    lines = files["csv"].read_text().splitlines()
    assert lines[0] == ",".join(results.CSV_COLUMNS) and len(lines) == 1 + len(doc["runs"])
    bad = copy.deepcopy(doc)
    bad["nvme"]["in_l2"]["controller"]["vendor_device"] = "QEMU"
    with pytest.raises(RunbookError, match=r"nvme/in_l2/controller/vendor_device"):
        results.write(tmp_path, bad)


def test_the_schema_is_a_valid_json_schema_and_documents_every_top_level_field():
    import jsonschema
    s = results.schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert set(s["required"]) == set(lab_doc())
    assert s["properties"]["version"]["const"] == results.VERSION


def test_files_without_a_version_of_another_version_or_none_at_all_are_refused(tmp_path):
    old = {"runs": [], "summary": [], "l2_vs_l1": []}  # what stage 05 wrote before results had a version
    (tmp_path / "results.json").write_text(json.dumps(old))
    with pytest.raises(RunbookError, match="has no version") as e:
        results.load(tmp_path)
    assert "--stages 05" in e.value.hint and "new run" in e.value.hint
    (tmp_path / "results.json").write_text(json.dumps({**lab_doc(), "version": 99}))
    with pytest.raises(RunbookError, match="version 99; this runbook reads versions 1, 2"):
        results.load(tmp_path)
    with pytest.raises(RunbookError, match="has no results.json"):
        results.load(tmp_path / "..")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(RunbookError, match="is not JSON"):
        results.validate_run(tmp_path)


# --- the latency plot ------------------------------------------------------------------------

def test_bench_plot_says_what_each_layer_ran_under_and_shows_as_text_by_its_caption(tmp_path):
    doc = lab_doc()
    pic = results.plot(doc["summary"], doc["comparisons"], doc["layers"], tmp_path)
    text = repr(pic)
    assert text.startswith("[picture] Plot bench.png") and "Figure size" not in text
    assert "L0 the host, L1 under TCG (emulated CPU), L2 under KVM" in pic.caption
    assert "measure QEMU's TCG emulator more than the disk" in pic.caption
    assert "passthrough vs emulated in the same guest" in pic.caption
    assert pic._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "bench.png").read_bytes() == pic._repr_png_()


def test_the_caption_follows_the_recorded_accelerators():
    assert results.caption({"L0": {"accel": "none"}, "L1": {"accel": "kvm"}, "L2": {"accel": "kvm"}}) == (
        "Ran under: L0 the host, L1 under KVM, L2 under KVM. Bars: median of the repeats; whiskers: min to max.")


# --- comparing runs --------------------------------------------------------------------------

def two_runs(tmp_path, alter=None, environment=True) -> list[Path]:
    """Two run folders: the recorded real run and a copy of it, altered by ``alter(doc)``."""
    a, b = tmp_path / "20261203-1230", tmp_path / "20261203-1300"
    for d in (a, b):
        d.mkdir()
    doc = real_doc(run_dir=a)
    if environment:  # as the stages record it now (the recorded run is from before they did)
        doc["environment"] = lab_doc()["environment"]
    (a / "results.json").write_text(json.dumps(doc))
    other = copy.deepcopy(doc)
    other["run"]["id"] = b.name
    for r in other["runs"]:
        r["iops"] *= 1.1
    other["summary"] = fio.summarize(other["runs"])
    if alter:
        alter(other)
    (b / "results.json").write_text(json.dumps(other))
    return [a, b]


def test_runs_measured_alike_compare_and_sit_side_by_side(tmp_path):
    runs = compare.load_runs(two_runs(tmp_path))
    assert compare.differences(runs) == []
    text = compare.report(runs)
    assert "measured alike" in text and "not comparable" not in text
    rows = compare.figure_rows(runs)
    assert len(rows) == 3 * 3 * 2  # profile x layer x run
    # a state of before version 2: L0 and L2 measured files then, L1 the raw namespace; each row says which
    assert [(r[0], r[1], r[2], r[3]) for r in rows[:2]] == [("randread-4k", "L0", "filesystem file", "20261203-1230"),
                                                              ("randread-4k", "L0", "filesystem file", "20261203-1300")]
    env = dict((r[0], r[1:]) for r in compare.environment_rows(runs))
    assert env["L1 accelerator"] == ("tcg", "tcg") and env["fio repeats"] == (4, 4)
    assert env["L1 QEMU version"] == ("7.2.22", "7.2.22")


def _kvm_and_new_qemu(doc):
    doc["layers"]["L1"]["accel"] = "kvm"
    doc["environment"]["L1"]["qemu"] = "8.2.2"
    doc["fio"]["runtime_s"] = 5.0
    doc["fio"]["profiles"] = doc["fio"]["profiles"][:2]


def test_differences_in_accelerator_versions_and_fio_are_said_plainly(tmp_path):
    runs = compare.load_runs(two_runs(tmp_path, _kvm_and_new_qemu))
    said = compare.statements(compare.differences(runs))
    assert ("The runs differ in L1 accelerator (20261203-1230: tcg, 20261203-1300: kvm): "
            "their figures are not comparable.") in said
    assert any("L1 QEMU version (20261203-1230: 7.2.22, 20261203-1300: 8.2.2)" in s for s in said)
    assert any("fio runtime" in s for s in said) and any("fio profiles" in s for s in said)
    assert len(said) == 4


def test_what_one_run_or_no_run_recorded_is_a_cannot_tell(tmp_path):
    def unrecorded(doc):
        doc["environment"]["L0"]["kernel"] = None
    said = compare.statements(compare.differences(compare.load_runs(two_runs(tmp_path, unrecorded))))
    assert said == ["Cannot tell whether the runs had the same L0 kernel: 20261203-1300 did not record it "
                    "(20261203-1230: 6.18.44-fc-v1147, 20261203-1300: not recorded)."]
    old = tmp_path / "old"
    old.mkdir()
    runs = compare.load_runs(two_runs(old, environment=False))  # both from before the environment was kept
    said = compare.statements(compare.differences(runs))
    assert said == ["Cannot tell whether the runs had the same L0 kernel, L0 QEMU version, L0 libvirt version, "
                    "L0 CPU model, L1 kernel, L1 QEMU version, L1 libvirt version, L1 CPU model: "
                    "no run recorded them."]
    assert "measured alike" not in compare.report(runs)


def test_runs_that_differ_in_a_version_are_not_comparable(tmp_path):
    def versions(doc):
        doc["environment"]["L0"]["kernel"] = "6.18.44"
    a, b = two_runs(tmp_path, versions)
    first = json.loads((a / "results.json").read_text())
    first["environment"]["L0"]["kernel"] = "6.1.0-56-amd64"
    (a / "results.json").write_text(json.dumps(first))
    said = compare.statements(compare.differences(compare.load_runs([a, b])))
    assert said == ["The runs differ in L0 kernel (20261203-1230: 6.1.0-56-amd64, 20261203-1300: 6.18.44): "
                    "their figures are not comparable."]


def test_compare_plot_per_profile_grouped_by_layer_with_units(tmp_path):
    runs = compare.load_runs(two_runs(tmp_path, _kvm_and_new_qemu))
    fig = compare.plot(runs, tmp_path / "compare.png", show=False)
    assert len(fig.axes) == 3 * 3  # (IOPS, MiB/s, latency) x 3 profiles
    for ax in fig.axes:
        assert ax.get_ylabel() and ax.get_xlabel() and ax.get_yscale() == "log"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["L0 filesystem file", "L1 raw namespace",
                                                                       "L2 filesystem file"]
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["20261203-1230", "20261203-1300"]
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_compare_runs_for_the_lab_test(tmp_path):
    a, b = two_runs(tmp_path)
    assert compare.compare_runs([a, b], tmp_path / "c.png") == [] and (tmp_path / "c.png").exists()
    other = tmp_path / "other"
    other.mkdir()
    assert len(compare.compare_runs(two_runs(other, _kvm_and_new_qemu))) == 4


def test_compare_refuses_clearly(tmp_path):
    a, b = two_runs(tmp_path)
    with pytest.raises(RunbookError, match="at least 2 runs, got 1"):
        compare.load_runs([a])
    with pytest.raises(RunbookError, match="given twice"):
        compare.load_runs([a, tmp_path / "." / a.name])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunbookError, match="empty has no results.json"):
        compare.load_runs([a, empty])
    with pytest.raises(RunbookError, match="no such run folder"):
        compare.load_runs([a, tmp_path / "nope"])


def test_the_command_line_compare(tmp_path, capsys):
    a, b = two_runs(tmp_path, _kvm_and_new_qemu)
    png = tmp_path / "out.png"
    assert cli.main(["compare", str(a), str(b), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Comparing 2 runs: 20261203-1230, 20261203-1300" in out and "not comparable" in out
    assert "randread-4k" in out and f"plots: {png}" in out and png.stat().st_size > 10_000
    # bad input: one message, no traceback, exit 2
    assert cli.main(["compare", str(a)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: compare needs at least 2 runs") and "HINT:" in err and "Traceback" not in err
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"runs": [], "summary": [], "l2_vs_l1": []}))
    assert cli.main(["compare", str(a), str(old), "--no-plot"]) == 2
    assert "has no version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["compare"])
    assert e.value.code == 2


def test_latest_runs_are_the_newest_with_results(tmp_path):
    a, b = two_runs(tmp_path)
    (tmp_path / "no-results").mkdir()
    (tmp_path / "latest").symlink_to(b.name)
    import os
    os.utime(a / "results.json", (1, 1))
    assert compare.latest_runs(tmp_path) == [a, b]


# --- the compare notebook --------------------------------------------------------------------

NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"


def test_the_compare_notebook_is_not_a_stage_and_stays_thin():
    import nbformat
    import re
    assert NOTEBOOK.name not in {p.name for p in choice.stages().values()}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "run_dirs" in tagged[0].source
    for c in nb.cells:
        if c.cell_type == "code":
            assert len(c.source.splitlines()) <= 12 and not re.search(r"^\s*(def|class) ", c.source, re.M)


def test_the_compare_notebook_runs_on_two_recorded_runs(tmp_path):
    import papermill as pm
    a, b = two_runs(tmp_path, _kvm_and_new_qemu)
    out = tmp_path / "compare_runs.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"run_dirs": [str(a), str(b)]},
                        cwd=str(NOTEBOOK.parent), kernel_name="python3", progress_bar=False)
    text = out.read_text()
    assert "not comparable" in text and "image/png" in text and "randread-4k" in text


# --- stage 05 writes it ----------------------------------------------------------------------

def test_stage_05_summary_writes_a_valid_results_json_from_the_run_state(tmp_path):
    """Stage 05's last step on a real run's recorded state and summary, without the lab."""
    from helpers import params as params_mod
    from helpers.nb import Stage
    from helpers.stages import verify_benchmark as vb
    from helpers.state import State
    run = tmp_path / "20261203-1229"
    run.mkdir()
    shutil.copy(LAB_RUN / "state.json", run / "state.json")
    shutil.copy(LAB_RUN / "summary.json", run / "summary.json")
    ctx = Stage("05", LAB_PARAMS, params_mod.load(LAB_PARAMS), State(run / "state.json"))
    summary, verdicts, files = vb.summary(ctx)
    doc = results.validate_run(run)
    assert doc["run"]["id"] == run.name and doc["run"]["started"] == "2026-12-03T12:29:07"
    assert doc["run"]["params"]["file"] == "lab.yaml" and doc["summary"] == summary
    assert doc["comparisons"] == verdicts and {c["question"].split(":")[0] for c in verdicts} == {
        "the same namespace in L1 (the emulated NVMe) against its backing file on L0"} or verdicts == []
    assert files["csv"].read_text().count("\n") == 1 + len(doc["runs"])
