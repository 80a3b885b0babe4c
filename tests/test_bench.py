"""fio command, parsing of fio's real JSON, the summary with its spread, results files."""
import json
from pathlib import Path

import pytest

from helpers.bench import fio, results
from helpers.errors import RunbookError

FIX = Path(__file__).parent / "fixtures" / "fio"


def test_command_is_direct_libaio_json():
    cmd = fio.fio_command("/dev/nvme0n1", "randread-4k", 3, 32)
    assert "--rw=randread" in cmd and "--bs=4k" in cmd and "--iodepth=32" in cmd
    assert "--direct=1" in cmd and "--output-format=json" in cmd and "--filename=/dev/nvme0n1" in cmd


@pytest.mark.parametrize("name,profile", [("randread-4k.json", "randread-4k"), ("randwrite-4k.json", "randwrite-4k")])
def test_parse_real_fio_output(name, profile):
    res = fio.parse(profile, (FIX / name).read_text())
    assert res.iops > 0 and res.bw_mib_s > 0
    assert 0 < res.lat_p50_us <= res.lat_p99_us <= res.lat_p999_us


def test_parse_without_json_is_a_clear_error():
    with pytest.raises(RunbookError, match="fio printed no JSON"):
        fio.parse("randread-4k", "fio: failed to open /dev/nvme0n1")


def _rows():
    rows = []
    for layer, base in (("L1", 1000.0), ("L2", 800.0)):
        for i, f in enumerate((0.9, 1.0, 1.1), 1):
            rows.append({"layer": layer, "target": "x", "run": i, "profile": "randread-4k", "iops": base * f,
                         "bw_mib_s": base * f / 256, "lat_p50_us": 10, "lat_p99_us": 20, "lat_p999_us": 40})
    return rows


def test_summary_reports_mean_and_spread_and_relative():
    s = fio.summarize(_rows())
    l1 = next(x for x in s if x["layer"] == "L1")
    assert l1["runs"] == 3 and l1["iops_mean"] == pytest.approx(1000)
    assert l1["iops_min"] == pytest.approx(900) and l1["iops_max"] == pytest.approx(1100)
    assert l1["iops_stdev"] == pytest.approx(81.65, rel=1e-3)
    rel = fio.relative(s)
    assert rel == [{"profile": "randread-4k", "iops_pct": pytest.approx(80), "bw_pct": pytest.approx(80)}]


def test_results_files_and_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    rows = _rows()
    s = fio.summarize(rows)
    paths = results.write(tmp_path, rows, s, fio.relative(s))
    data = json.loads(paths["json"].read_text())
    assert len(data["runs"]) == 6 and data["l2_vs_l1"][0]["iops_pct"] == pytest.approx(80)
    assert paths["csv"].read_text().count("\n") == 7
    results.plot(s, tmp_path)
    assert (tmp_path / "bench.png").stat().st_size > 1000
