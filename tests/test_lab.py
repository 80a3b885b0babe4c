"""The whole emulated lab, for real: a real libvirtd, L1 under TCG with an Intel
vIOMMU and an emulated NVMe, intel_iommu=on set and rebooted, L2 under KVM in
L1 with the NVMe bound to vfio-pci, verified, benchmarked, then torn down.

Runs the runner exactly as `make run` does (parameters/lab.yaml), into a run
folder of its own, and asserts on the recorded state and on the live guests.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import params as params_mod
from helpers.access import l1_guest, l2_guest
from helpers.state import State

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "lab-e2e"
# parameters/lab.yaml with its own names, port and folder, so the suite never touches
# a lab the user brought up with `make run`
LAB = Path("/var/lib/nested-nvme-ci/lab-ci.yaml")
OVERRIDES = {"l1": {"name": "nested-kvm-ci", "network": {"ssh_port": 2223}},
             "host": {"workdir": "/var/lib/nested-nvme-ci"},
             "nvme": {"backing_file": "/var/lib/nested-nvme-ci/nvme.raw"}}


def write_lab_params(path: Path = LAB, **l2_select) -> Path:
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    for section, values in OVERRIDES.items():
        for k, v in values.items():
            if isinstance(v, dict):
                data[section][k].update(v)
            else:
                data[section][k] = v
    if l2_select:
        data["l2"]["select"] = l2_select
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]


def runner(outputs: Path, *args, params: Path = LAB, record: str = ""):
    """``helpers run``; with ``record``, every command the stages run is recorded under that
    label in the run folder's commands.jsonl (``helpers.record``)."""
    import os
    cmd = [sys.executable, "-m", "helpers", "run", "--params", str(params), "--outputs", str(outputs), *args]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "NESTED_NVME_RECORD": record} if record else None
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=3000, env=env)


def virsh_l0(*args):
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Stages 01-05 on the lab's parameters, from nothing (a leftover lab is torn down first)."""
    outputs = tmp_path_factory.mktemp("outputs")
    write_lab_params()
    runner(outputs, "--stages", "99", "--run-id", "pre-clean")
    cold_check = cold_check_mode(outputs)
    # Once, with no retry: a stall or an L2 crash fails the suite and names itself (QEMU >= 8.1
    # under TCG is what setup installs; scripts/stall_runs.py counts them over many cold runs).
    r = runner(outputs, "--run-id", RUN_ID, record="cold")
    run = outputs / RUN_ID
    print(r.stdout[-6000:], r.stderr[-3000:])
    yield {"outputs": outputs, "run": run, "result": r, "cold_check": cold_check}
    t = runner(outputs, "--stages", "99", "--run-id", "final-clean")
    print(t.stdout[-2000:], t.stderr[-2000:])


def machine_snapshot(p) -> dict:
    """What a check run must leave as it is: L1's domain, the files under the workdir and beside
    the backing file, and the lab image cache's recipes."""
    workdir, backing_dir = Path(p.host.workdir), Path(p.nvme.backing_file).parent
    listing = lambda d: sorted(str(f) for f in d.rglob("*")) if d.exists() else None  # noqa: E731
    cache = Path("/var/cache/nested-nvme/images")
    return {"domain": virsh_l0("dominfo", p.l1.name).returncode == 0, "workdir": listing(workdir),
            "backing_dir": listing(backing_dir), "images": sorted(x.name for x in cache.iterdir()) if cache.exists() else []}


def cold_check_mode(outputs: Path) -> dict:
    """`--check` before anything is built: timed, with what the machines looked like before and after."""
    import time
    p = params_mod.load(LAB)
    before = machine_snapshot(p)
    t0 = time.monotonic()
    r = runner(outputs, "--check", "--run-id", "cold-check")
    seconds = time.monotonic() - t0
    print("cold check:", r.stdout[-3000:], r.stderr[-2000:])
    return {"result": r, "seconds": seconds, "before": before, "after": machine_snapshot(p),
            "run": outputs / "cold-check"}


def check_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def state(lab) -> dict:
    return json.loads((lab["run"] / "state.json").read_text())


def live(lab):
    p = params_mod.load(LAB)
    st = State(lab["run"] / "state.json")
    l1 = l1_guest(p, st)
    return p, st, l1, l2_guest(p, st, l1)


def test_01_runs_stages_01_to_05(lab):
    r = lab["result"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = json.loads((lab["run"] / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("01", "passed"), ("02", "passed"), ("03", "passed"), ("04", "passed"), ("05", "passed")]
    for s in summary["stages"]:
        assert (lab["run"] / s["notebook"]).exists()
        for w in s["steps"]:  # every step's time on record: its plan, and its apply when applied
            assert w["plan_seconds"] is not None and (w.get("apply_seconds") is not None) == w["applied"], w
        assert sum(w["plan_seconds"] + w.get("apply_seconds", 0) for w in s["steps"]) <= s["seconds"]
    waits = {(s["stage"], w["step"]): w["waits"] for s in summary["stages"] for w in s["steps"]}
    assert any("guest agent" in x["what"] for x in waits[("02", "Wait for L1")])  # the wait for a guest, named
    assert "where the time went" in (lab["run"] / "report.html").read_text()


def test_01a_check_mode_before_the_lab_was_built_changed_nothing_and_shows_the_plans(lab):
    """The cold `--check` ran before stage 01-05 built anything: nothing changed (no domain,
    no file, no image), no changing step was applied, and the report shows each plan; the
    steps that need L1 say they are unknown until it runs."""
    from helpers.run.choice import plannable
    cold = lab["cold_check"]
    assert cold["result"].returncode == 0, cold["result"].stdout[-3000:] + cold["result"].stderr[-3000:]
    assert cold["before"] == cold["after"] and cold["after"]["domain"] is False
    summary = check_summary(cold["run"])
    assert summary["mode"] == "check" and summary["status"] == "passed"
    walked = [(s["stage"], w) for s in summary["stages"] for w in s.get("steps", [])]
    assert walked and not [w for _, w in walked if w["applied"] and w["changes"]]
    plans = {(stage, w["step"]): w for stage, w in walked}
    assert plans[("02", "Define L1")]["changes"] and plans[("02", "Start L1")]["changes"]
    assert "runs" in plans[("02", "Wait for L1")]["unknown"]
    # all in L1, but the one that reads only nvme.target (stage 04 takes the NVMe on to L2)
    assert all(w["unknown"] for (stage, step), w in plans.items() if stage == "04" and step != "The NVMe's target")
    assert all(w["unknown"] for (stage, label), w in plans.items()
               if stage == "05" and label != "Results")  # all in L2 (fio on L0 waits for the namespace in L2)
    for s in summary["stages"]:  # a stage not yet made of steps is skipped, never run
        assert s["status"] == "passed" or (s["status"] == "not plannable"
                                           and not plannable(s["stage"], ROOT / "notebooks" / s["notebook"]))
    import html as html_mod
    report = html_mod.unescape((cold["run"] / "report.html").read_text())
    assert "Check mode" in report and "Plan of 'Define L1' (check mode: nothing is changed): 1 change" in report
    assert "virsh define nested-kvm-ci.xml" in report and "unknown until L1 (nested-kvm-ci) runs" in report
    assert not (lab["outputs"] / "latest").exists() or (lab["outputs"] / "latest").resolve() != cold["run"]
    print(f"cold check: {cold['seconds']:.1f} s")


def test_01b_each_executed_stage_walked_exactly_its_steps(lab):
    from helpers.stages import build_l1, build_l2, check_host, configure_l1, verify_benchmark
    from helpers.steps import walk_names
    walked = state(lab)["steps"]
    for stage, module in (("01", check_host), ("02", build_l1), ("03", configure_l1), ("04", build_l2),
                          ("05", verify_benchmark)):
        assert [w["class"] for w in walked[stage]] == walk_names(module.STEPS), stage
        assert all(w["mode"] == "run" for w in walked[stage])


def test_01c_check_mode_on_the_warm_lab_reports_no_change_for_stages_01_to_04(lab):
    """Right after the run, with everything up: every step of 01-04 plans no change."""
    import time
    t0 = time.monotonic()
    r = runner(lab["outputs"], "--check", "--stages", "01,02,03,04", "--run-id", "warm-check")
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = check_summary(lab["outputs"] / "warm-check")
    walked = [(s["stage"], w) for s in summary["stages"] for w in s.get("steps", [])]
    assert {s for s, _ in walked} >= {"02", "04"}
    assert [(s, w["step"], w["plan"]) for s, w in walked if w["changes"] or w["unknown"]] == []
    print(f"warm check 01-04: {seconds:.1f} s")


def test_02_host_chose_tcg_and_l1_runs_under_it(lab):
    st = state(lab)
    assert st["accel"] == "tcg" and "kvm_pvm" in st["host"]["accel_reason"]
    xml = virsh_l0("dumpxml", "nested-kvm-ci").stdout
    assert "type='qemu'" in xml and "<iommu model='intel'>" in xml and "intremap='on'" in xml
    assert "caching_mode='on'" in xml and "iotlb='on'" in xml and "driver='qemu'" in xml


def test_02b_the_guest_agent_way_in_runs_commands_in_l1(lab):
    from helpers.guest import Agent, libvirt_agent_call
    from helpers.virt import PyLibvirt
    agent = Agent(call=libvirt_agent_call(PyLibvirt().domain("nested-kvm-ci")), name="l1-agent")
    r = agent.run("cat /etc/hostname; echo err >&2; exit 3")
    assert (r.rc, r.out.strip(), r.err.strip()) == (3, "l1", "err")


def test_03_l1_kernel_has_the_iommu_on(lab):
    _, _, l1, _ = live(lab)
    assert "intel_iommu=on" in l1.run("cat /proc/cmdline", check=True).out
    dmesg = l1.run("dmesg", check=True).out
    assert "DMAR: IOMMU enabled" in dmesg and "DMAR-IR: Enabled IRQ remapping" in dmesg
    assert int(l1.run("ls /sys/kernel/iommu_groups | wc -l").out) > 0
    st = state(lab)
    assert st["changes"]["03"]["Install the virtualization stack"][0]["changed"] is True  # qemu-utils, offline
    assert l1.run("dpkg-query -W -f='${Status}' qemu-utils").out.endswith("install ok installed")


def test_04_nvme_alone_in_its_group_and_bound_to_vfio_in_l1(lab):
    st = state(lab)
    bdf = st["nvme"]["bdf_in_l1"]
    assert list(st["nvme"]["group_members"]) == [bdf]  # no other endpoint in the NVMe's IOMMU group
    _, _, l1, _ = live(lab)
    assert "Kernel driver in use: vfio-pci" in l1.run(["lspci", "-k", "-s", bdf], check=True).out
    assert l1.exists(f"/dev/vfio/{st['nvme']['iommu_group']}")
    assert "1234" not in l1.run("nvme list -o json").out  # the disk is gone from L1
    assert st["l2"]["accel"] == "kvm"  # L2 under KVM inside L1 (TCG's CPU offers SVM)


def test_05_l2_sees_the_controller_and_the_disk(lab):
    _, _, _, l2 = live(lab)
    assert "[1b36:0010]" in l2.run("lspci -nn", check=True).out
    st = state(lab)["l2_verify"]
    assert st["controller"]["ids"] == "1b36:0010"
    assert st["nvme"]["model"] == "QEMU NVMe Ctrl" and st["nvme"]["serial"] == "1234"
    assert st["nvme"]["size_bytes"] == 1024 ** 3
    assert st["df"]["type"] == "xfs" and st["df"]["mounted_on"] == "/data"
    assert "/dev/nvme0n1" in l2.run("findmnt -n -o SOURCE /data").out


def test_06_benchmark_results_for_each_layer(lab):
    """Like for like: the namespace as a block device on every layer, and the virtio-blk disk in
    the same L2; every figure with its spread, every comparison with a verdict."""
    data = json.loads((lab["run"] / "results.json").read_text())
    repeats = data["fio"]["repeats"]
    series = {(s["layer"], s["target_kind"], s["profile"]): s for s in data["summary"]}
    profiles = ("randread-4k", "seqread-128k", "randwrite-4k")
    for key in (("L0", "namespace"), ("L1", "namespace"), ("L2", "namespace"), ("L2", "virtio-blk")):
        for profile in profiles:
            s = series[(*key, profile)]
            assert s["runs"] == repeats and 0 < s["iops_min"] <= s["iops_median"] <= s["iops_max"]
    targets = {(r["layer"], r["target_kind"]): r["target"] for r in data["runs"]}
    assert targets[("L1", "namespace")].startswith("/dev/nvme") and targets[("L2", "namespace")] == "/dev/nvme0n1"
    assert targets[("L0", "namespace")].endswith("nvme.raw") and targets[("L2", "virtio-blk")].startswith("/dev/vd")
    assert {(r["layer"], r["accel"], r["iommu"]) for r in data["runs"]} == {
        ("L0", "none", "none"), ("L1", "tcg", "passthrough"), ("L2", "kvm", "translated"), ("L2", "kvm", "none")}
    seed = [c for c in data["comparisons"] if c["question"].startswith("passthrough vs emulated in the same guest")]
    assert [c["profile"] for c in seed] == list(profiles)
    assert all(c["verdict"] in ("faster", "slower", "within noise") and c["ratio_low"] <= c["ratio_median"]
               <= c["ratio_high"] for c in seed)
    assert data["not_measured"] == []  # the lab consents to every write
    assert (lab["run"] / "results.csv").exists() and (lab["run"] / "bench.png").stat().st_size > 10_000
    html = (lab["run"] / "report.html").read_text()
    assert "stage-05" in html and "data:image/png;base64" in html and "passthrough vs emulated in the same guest" in html
    assert "L0 the host, L1 under TCG (emulated CPU), L2 under KVM" in html


def test_06a_the_executed_notebooks_read_clean_as_text(lab):
    """What papermill --log-output and a text diff show: a text form for every display, no raw
    Python value, units on every figure; stage 05 says what each layer ran under."""
    import nbformat
    from helpers.report import outputs_text, unreadable
    for name in ("01_check_host", "02_build_l1", "03_configure_l1", "04_build_l2", "05_verify_benchmark"):
        text = outputs_text(nbformat.read(lab["run"] / f"{name}.ipynb", as_version=4))
        assert unreadable(text) == [], (name, unreadable(text))
    assert "KeyboardInterrupt caught in kernel" not in lab["result"].stdout + lab["result"].stderr


@pytest.mark.browser
def test_06b_the_report_works_in_a_real_browser(lab):
    """Contents links and the hide-code button of this real run's report, in headless Chromium."""
    from browser import check_report_in_browser
    shots = check_report_in_browser(lab["run"], lab["run"] / "screenshots")
    assert all(s.stat().st_size > 5_000 for s in shots)


def test_06c_results_match_the_schema_and_two_real_runs_compare(lab):
    """results.json of this run against its schema; then stage 05 measured again as a run
    of its own on the same lab (the L1 baseline carried over: the NVMe now belongs to L2),
    and the two runs side by side: same lab, same settings, so nothing makes them incomparable."""
    from helpers.bench.compare import compare_runs
    from helpers.bench.results import validate_run
    doc = validate_run(lab["run"])
    assert doc["version"] == 2
    second = lab["outputs"] / f"{RUN_ID}-second"
    second.mkdir()
    st = state(lab)
    for key in ("bench_l2", "bench_l0", "bench_l2_virtio"):
        st.pop(key, None)
    (second / "state.json").write_text(json.dumps(st))
    r = runner(lab["outputs"], "--stages", "05", "--run-id", second.name)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    validate_run(second)
    assert json.loads((second / "results.json").read_text())["runs"] != json.loads((lab["run"] / "results.json").read_text())["runs"]
    notes = compare_runs([lab["run"], second], plot_file=second / "compare.png")
    assert notes == [], notes
    assert (second / "compare.png").stat().st_size > 10_000


def test_07_rerunning_02_03_04_changes_nothing(lab):
    r = runner(lab["outputs"], "--stages", "02,03,04", "--run-id", lab["run"].name, record="warm")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    changes = state(lab)["changes"]
    did = [(stage, c["what"]) for stage in ("02", "03", "04") for step in changes[stage].values()
           for c in step if c["changed"]]
    assert did == []


def test_shown_is_run(lab):
    """What each step's plan showed is what its apply ran, on every machine: in the cold run
    (stages 01-05), each changing command that ran was in its step's plan and each planned
    change ran; in the warm rerun of 02-04 (test_07), nothing was planned and nothing changed.
    What counts as a change is defined in tests/shown_is_run.py (reads may run unplanned)."""
    import shown_is_run as sir
    records = lab["run"] / "commands.jsonl"
    cold, warm = sir.load(records, "cold"), sir.load(records, "warm")
    assert sir.mismatches(cold) == []
    changed = sir.applied_steps(cold)
    assert {("02", "Define L1"), ("02", "Start L1"), ("04", "Define L2"), ("04", "Start L2")} <= set(changed)
    assert [r for r in cold if r["kind"] == "libvirt"], "the cold run defined and started L1 and L2"
    assert warm and sir.mismatches(warm) == [] and sir.applied_steps(warm) == []
    assert [r["cmd"] for r in warm if r["kind"] == "libvirt"] == []


def test_07b_nbval_reruns_each_executed_stage_and_checks_its_outputs(lab):
    """nbval re-executes the run's notebooks (their injected parameters point at this run)
    and compares the cells marked NBVAL_CHECK_OUTPUT, sanitized of times and addresses."""
    before = state(lab)
    nbs = [str(lab["run"] / n) for n in ("01_check_host.ipynb", "02_build_l1.ipynb", "03_configure_l1.ipynb",
                                          "04_build_l2.ipynb", "05_verify_benchmark.ipynb")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval-lax",
                        "--nbval-kernel-name", "python3", "--nbval-cell-timeout", "1800",
                        "--nbval-sanitize-with", str(ROOT / "tests" / "nbval-sanitize.cfg"), *nbs],
                       cwd=ROOT / "notebooks", capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stdout[-5000:]
    assert "passed" in r.stdout
    after = state(lab)
    assert after["bench_l2"] == before["bench_l2"] and after["bench_l0"] == before["bench_l0"]  # once per run


def _with(tmp_path, **select):
    return write_lab_params(tmp_path / "lab-wrong.yaml", **select)


def test_08_wrong_bdf_and_non_nvme_are_refused_with_nothing_changed(lab, tmp_path):
    before = state(lab)
    r = runner(lab["outputs"], "--stages", "04", "--run-id", lab["run"].name, params=_with(tmp_path, bdf="0000:00:09.0"))
    assert r.returncode == 1 and "no PCI device at 0000:00:09.0" in r.stderr
    p, st, l1, _ = live(lab)
    virtio = l1.run("lspci -D -d 1af4: | head -1 | cut -d' ' -f1", check=True).out.strip()
    r = runner(lab["outputs"], "--stages", "04", "--run-id", lab["run"].name, params=_with(tmp_path, bdf=virtio))
    assert r.returncode == 1 and "not an NVMe controller" in r.stderr
    after = state(lab)
    assert after["nvme"] == before["nvme"]
    assert "vfio-pci" in l1.run(["lspci", "-k", "-s", before["nvme"]["bdf_in_l1"]]).out


def test_09_teardown_gives_everything_back_and_twice_changes_nothing(lab):
    p = params_mod.load(LAB)
    r = runner(lab["outputs"], "--stages", "99", "--run-id", lab["run"].name)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = state(lab)
    assert st["teardown"]["nvme_driver_in_l1"] == "nvme" and st["teardown"]["nvme_listed_in_l1"] is True
    assert virsh_l0("dominfo", p.l1.name).returncode != 0  # L1 is undefined
    assert not Path(p.nvme.backing_file).exists() and not (Path(p.host.workdir) / f"{p.l1.name}.qcow2").exists()
    assert st.get("created", {}).get("files", []) == []
    again = runner(lab["outputs"], "--stages", "99", "--run-id", lab["run"].name)
    assert again.returncode == 0
    changes = state(lab)["changes"]["99"]
    assert not [c for step in changes.values() for c in step if c["changed"]]
