"""fio command, parsing of fio's real JSON, the summary with its spread, results files."""
import json
from pathlib import Path

import pytest

from helpers.bench import fio, results
from helpers.errors import RunbookError
from helpers.guest import Result

FIX = Path(__file__).parent / "fixtures" / "fio"


def test_command_is_direct_libaio_json():
    cmd = fio.fio_command("/dev/nvme0n1", ["randread-4k"], 3, 32)
    assert "--rw=randread" in cmd and "--bs=4k" in cmd and "--iodepth=32" in cmd
    assert "--direct=1" in cmd and "--output-format=json" in cmd and "--filename=/dev/nvme0n1" in cmd


THREE = ["randread-4k", "seqread-128k", "randwrite-4k"]


def _jobs(cmd):
    """The command split at each --name: (global options, [(name, that job's options)])."""
    first = next(i for i, a in enumerate(cmd) if a.startswith("--name="))
    jobs, cur = [], None
    for a in cmd[first:]:
        if a.startswith("--name="):
            cur = (a.split("=", 1)[1], [])
            jobs.append(cur)
        else:
            cur[1].append(a)
    return cmd[1:first], jobs


def test_runtime_below_a_second_is_given_to_fio_in_milliseconds():
    assert "--runtime=500ms" in fio.fio_command("/dev/nvme0n1", THREE, 0.5, 16)
    assert "--runtime=30" in fio.fio_command("/dev/nvme0n1", THREE, 30.0, 16)
    assert fio.fio_time(1.25) == "1250ms"


def test_command_runs_profiles_one_after_another_in_one_fio():
    cmd = fio.fio_command("/dev/nvme0n1", THREE, 1, 16)
    assert cmd[0] == "fio" and cmd.count("fio") == 1
    common, jobs = _jobs(cmd)
    assert {"--filename=/dev/nvme0n1", "--ioengine=libaio", "--direct=1", "--size=16M", "--runtime=1",
            "--time_based", "--output-format=json"} <= set(common)
    assert "--stonewall" not in common and not any("group_reporting" in a for a in cmd)
    assert [n for n, _ in jobs] == THREE
    for k, (name, opts) in enumerate(jobs):
        p = fio.PROFILES[name]
        assert {f"--rw={p['rw']}", f"--bs={p['bs']}", f"--iodepth={p['iodepth']}"} <= set(opts)
        # every job after the first waits for the one before: sequential, not parallel
        assert ("--stonewall" in opts) == (k > 0)


def test_parse_real_multi_job_output_one_result_per_profile():
    text = (FIX / "three-profiles.json").read_text()
    res = fio.parse_all(THREE, text)
    assert [r.profile for r in res] == THREE
    for r in res:
        assert r.iops > 0 and r.bw_mib_s > 0
        assert 0 < r.lat_p50_us <= r.lat_p99_us <= r.lat_p999_us
    jobs = {j["jobname"]: j for j in json.loads(text)["jobs"]}
    # the write profile reads fio's write side (its read side is empty), the reads their read side
    assert jobs["randwrite-4k"]["read"]["iops"] == 0
    assert res[2].iops == pytest.approx(jobs["randwrite-4k"]["write"]["iops"])
    assert res[0].iops == pytest.approx(jobs["randread-4k"]["read"]["iops"])
    # by job name, not by position: asking in another order gives the same figures
    assert [r.iops for r in fio.parse_all(THREE[::-1], text)] == [r.iops for r in res[::-1]]
    assert fio.parse("seqread-128k", text) == res[1]


def test_parse_multi_job_missing_profile_is_a_clear_error():
    with pytest.raises(RunbookError, match="no job for seqwrite-128k"):
        fio.parse_all(["randread-4k", "seqwrite-128k"], (FIX / "three-profiles.json").read_text())


class FakeGuest:
    """Answers every command with a recorded fio output (or a failure)."""

    name = "l2"

    def __init__(self, out="", rc=0, err=""):
        self.out, self.rc, self.err, self.calls = out, rc, err, []

    def run(self, cmd, timeout=120):
        self.calls.append((cmd, timeout))
        return Result(self.rc, "fio: some note\n" + self.out, self.err, cmd)


def test_run_profiles_one_fio_per_repeat_rows_per_profile():
    g = FakeGuest((FIX / "three-profiles.json").read_text())
    said = []
    rows = fio.run_profiles(g, "L2", "/dev/nvme0n1", THREE, 3, 1, 16, say=said.append, accel="kvm",
                            iommu="translated")
    assert len(g.calls) == 3
    for cmd, timeout in g.calls:
        assert cmd.startswith("fio ") and cmd.count("--name=") == 3 and cmd.count("--stonewall") == 2
        assert timeout == 1 * 3 * 4 + 300
    assert len(rows) == 9
    assert [(r["profile"], r["run"]) for r in rows] == [(p, i) for p in THREE for i in (1, 2, 3)]
    keys = {"layer", "target", "target_kind", "accel", "iommu", "run", "profile", "iops", "bw_mib_s", "lat_p50_us",
            "lat_p99_us", "lat_p999_us", "seconds"}
    assert all(set(r) == keys and r["layer"] == "L2" and r["target"] == "/dev/nvme0n1" for r in rows)
    assert all((r["target_kind"], r["accel"], r["iommu"]) == ("namespace", "kvm", "translated") for r in rows)
    assert all(r["iops"] > 0 and r["seconds"] >= 0 for r in rows)
    assert len(said) == 9 and said[0].startswith("  L2 raw namespace randread-4k run 1/3: ") and "IOPS" in said[0]
    assert "µs" in said[0] and " us" not in said[0]
    assert said[1].startswith("  L2 raw namespace seqread-128k run 1/3: ")
    assert said[3].startswith("  L2 raw namespace randread-4k run 2/3: ")


def test_run_profiles_fio_failure_raises():
    g = FakeGuest(rc=1, err="fio: failed to open /data/fio-bench.bin")
    with pytest.raises(RunbookError, match="failed to open") as e:
        fio.run_profiles(g, "L2", "/data/fio-bench.bin", THREE, 3, 1, 16, say=lambda _: None)
    assert len(g.calls) == 1 and "fio is installed" in e.value.hint


@pytest.mark.parametrize("name,profile", [("randread-4k.json", "randread-4k"), ("randwrite-4k.json", "randwrite-4k")])
def test_parse_real_fio_output(name, profile):
    res = fio.parse(profile, (FIX / name).read_text())
    assert res.iops > 0 and res.bw_mib_s > 0
    assert 0 < res.lat_p50_us <= res.lat_p99_us <= res.lat_p999_us


def test_parse_without_json_is_a_clear_error():
    with pytest.raises(RunbookError, match="fio printed no JSON"):
        fio.parse("randread-4k", "fio: failed to open /dev/nvme0n1")


def _rows(l2=(800.0, (0.9, 1.0, 1.1)), virtio=None):
    rows = []
    series = [("L1", "namespace", 1000.0, (0.9, 1.0, 1.1)), ("L2", "namespace", *l2)]
    if virtio:
        series.append(("L2", "virtio-blk", *virtio))
    for layer, kind, base, factors in series:
        for i, f in enumerate(factors, 1):
            rows.append({"layer": layer, "target": "x", "target_kind": kind, "accel": "kvm", "iommu": None,
                         "run": i, "profile": "randread-4k", "iops": base * f, "bw_mib_s": base * f / 256,
                         "lat_p50_us": 10, "lat_p99_us": 20, "lat_p999_us": 40, "seconds": 1.0})
    return rows


def test_summary_reports_median_and_spread_and_relative():
    s = fio.summarize(_rows(l2=(800.0, (0.5, 1.0, 1.05))))
    l1 = next(x for x in s if x["layer"] == "L1")
    assert l1["runs"] == 3 and l1["iops_median"] == pytest.approx(1000) and l1["iops_mean"] == pytest.approx(1000)
    assert l1["iops_min"] == pytest.approx(900) and l1["iops_max"] == pytest.approx(1100)
    assert l1["iops_stdev"] == pytest.approx(81.65, rel=1e-3)
    l2 = next(x for x in s if x["layer"] == "L2")
    assert l2["iops_median"] == pytest.approx(800) and l2["iops_mean"] < 700  # one slow repeat moves the mean only
    rel = fio.relative(s)
    assert rel == [{"profile": "randread-4k", "iops_pct": pytest.approx(80), "bw_pct": pytest.approx(80)}]


def test_a_verdict_says_faster_or_slower_only_when_every_repeat_is_on_one_side():
    v = fio.verdict([200, 210, 220, 230, 240], [100, 110, 120, 130, 140])
    assert v["verdict"] == "faster" and v["ratio_median"] == pytest.approx(220 / 120)
    assert (v["ratio_low"], v["ratio_high"]) == (pytest.approx(200 / 140), pytest.approx(240 / 100))
    assert v["p"] == pytest.approx(2 / 252)
    assert fio.verdict([100, 110, 120, 130, 140], [200, 210, 220, 230, 240])["verdict"] == "slower"
    overlap = fio.verdict([100, 150, 300], [120, 140, 160])
    assert overlap["verdict"] == "within noise" and overlap["p"] is None and overlap["ratio_low"] < 1 < overlap["ratio_high"]
    assert fio.verdict([], [1, 2])["verdict"] == "not measured"


def test_separation_p_is_the_exact_rank_test_at_its_extreme():
    assert fio.separation_p(3, 3) == pytest.approx(0.1)
    assert fio.separation_p(4, 4) == pytest.approx(2 / 70)
    assert fio.separation_p(5, 5) == pytest.approx(2 / 252)


def test_comparisons_put_passthrough_against_emulated_in_the_same_guest_first():
    s = fio.summarize(_rows(l2=(800.0, (0.95, 1.0, 1.05)), virtio=(400.0, (0.9, 1.0, 1.1))))
    c = fio.comparisons(s)
    assert [x["question"].split(":")[0] for x in c] == [
        "passthrough vs emulated in the same guest",
        "the same namespace in L2 (through VFIO) against in L1 (before it was given away)"]
    assert c[0]["verdict"] == "faster" and c[0]["ratio_median"] == pytest.approx(2.0)
    assert c[1]["verdict"] == "slower"


def test_write_profiles_need_consent_reads_never_do():
    assert fio.split_by_consent(THREE, False) == (["randread-4k", "seqread-128k"], ["randwrite-4k"])
    assert fio.split_by_consent(THREE, True) == (THREE, [])


def test_results_files_and_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from recorded import lab_doc
    rows = _rows()
    s = fio.summarize(rows)
    paths = results.write(tmp_path, lab_doc(rows=rows))
    data = json.loads(paths["json"].read_text())
    assert data["version"] == results.VERSION
    assert len(data["runs"]) == 6 and data["comparisons"][0]["verdict"] == "slower"
    assert paths["csv"].read_text().count("\n") == 7
    results.plot(s, data["comparisons"], data["layers"], tmp_path)
    assert (tmp_path / "bench.png").stat().st_size > 1000
