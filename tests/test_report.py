"""report.html of a real stage-01 run, opened in headless Chromium: it loads, with its
table of contents and its images. The screenshot is kept under outputs/test-artifacts/."""
import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-run")
    r = subprocess.run([sys.executable, "-m", "helpers", "run", "--stages", "01", "--outputs", str(out),
                        "--run-id", "report", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "report" / "report.html"


def test_report_has_contents_verdicts_durations_and_the_picture(report):
    html = report.read_text()
    assert "runbook-toc" in html and re.search(r"href=[\"']#stage-01", html) and "passed" in html
    assert re.search(r"<td>\d+(\.\d+)? s</td>", html)
    svgs = [base64.b64decode(b).decode(errors="replace")
            for b in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)]
    assert any("runbook-picture" in s and "Stage 01: check host" in s for s in svgs)  # the L0/L1/L2 picture
    assert "toggleCode" in html  # code can be hidden
    assert "runbook-time-chart" in html and "where the time went: step" in html  # every step's time


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Run report" in dom or "runbook-toc" in dom
    assert dom.count("<img") >= 1 and "stage-01" in dom
    shot = ARTIFACTS / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,2000", report.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
