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


def test_the_report_is_titled_by_its_run_and_numbers_its_cells_without_gaps(report):
    html = report.read_text()
    assert re.search(r"<title>Run report \((lab|[\w-]+)\): passed</title>", html), re.findall("<title>.*?</title>", html)
    counts = [int(n) for n in re.findall(r"In(?:&nbsp;|\s)\[(\d+)\]:", html)]
    assert counts and counts == list(range(1, len(counts) + 1))  # the injected parameters cell left out, no jump


def test_stage_01_read_as_text_has_a_text_form_for_every_display_and_no_raw_python(report):
    import nbformat
    from helpers.report import outputs_text, unreadable
    text = outputs_text(nbformat.read(report.parent / "01_check_host.ipynb", as_version=4))
    assert "[picture] stage 01, check host" in text  # the L0/L1/L2 picture by its caption
    assert "check" in text and "verdict" in text      # the check table as text
    assert unreadable(text) == []


def test_unreadable_names_each_kind_of_defect():
    from helpers.report import unreadable
    bad = ["<IPython.core.display.HTML object>", "<IPython.core.display.SVG object>",
           "<Figure size 1600x460 with 3 Axes>", "{'agent_wait_s': 19.1, 'ssh_wait_s': 2.0}",
           "vfio-pci  /dev/vfio/6  True  True", "p99 6324 us", "latency p50 / p99 (us)"]
    assert unreadable("\n".join(bad)) == bad
    assert unreadable("vfio-pci  /dev/vfio/6  yes  yes\np99 6,324 µs\nsize 1 GiB (1,073,741,824 bytes)") == []


def test_a_teardown_after_the_run_gets_its_own_report(report, tmp_path):
    import json
    from helpers import report as report_mod
    run = tmp_path / "run"
    shutil.copytree(report.parent, run)
    summary = json.loads((run / "summary.json").read_text())
    shutil.copy(run / "01_check_host.ipynb", run / "99_teardown.ipynb")
    summary["stages"].append({"stage": "99", "notebook": "99_teardown.ipynb", "status": "passed", "seconds": 1.0})
    report_mod.write_report(run, summary)
    html, down = (run / "report.html").read_text(), (run / "teardown.html").read_text()
    assert "stage-01" in html and "id='stage-99'" not in html and "teardown.html" in html
    assert "<title>Run report" in html and "<title>Teardown of run report" in down and "stage-99" in down


def test_a_png_picture_keeps_its_caption_in_the_html_report(tmp_path):
    """A PNG output alone drops its text form in HTML: the bench plot's caption (what each
    layer ran under, read the ratios under TCG) must reach the report's reader too."""
    import nbformat
    from nbclient import NotebookClient
    from helpers.report import _render
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(
        "import matplotlib; matplotlib.use('Agg')\nimport matplotlib.pyplot as plt, io\nfrom helpers import ui\n"
        "f = plt.figure(figsize=(2, 2)); b = io.BytesIO(); f.savefig(b, format='png'); plt.close(f)\n"
        "ui._display(ui.Picture(b.getvalue(), 'Ran under: L0 the host, L1 under TCG (emulated CPU)'))"))
    NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(Path(__file__).parent.parent)}}).execute()
    _render(nb, "t", tmp_path / "r.html", False)
    html = (tmp_path / "r.html").read_text()
    assert "Ran under: L0 the host, L1 under TCG (emulated CPU)" in html and "data:image/png;base64" in html


def test_the_reports_exporter_gives_nbconverts_page_with_its_alt_texts_and_tab_stops():
    """The report's exporter skips HTMLExporter's whole-page BeautifulSoup pass and bleach over
    highlighted code: the same text, every image with an alt text, every cell input and output
    focusable, code still escaped."""
    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter
    from helpers.report import _exporter, accessible
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x = '<script>alert(1)</script>' if 1 < 2 else 0\nprint(x)", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="<b>not bold</b>\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("display_data", data={"text/html": "<table><tr><td>1 GiB</td></tr></table>"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# Stage\n\nWhat it does."), code]
    theirs, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    ours, _ = _exporter().from_notebook_node(nb)
    a, b = BeautifulSoup(theirs, "html.parser"), BeautifulSoup(ours, "html.parser")
    assert a.get_text() == b.get_text()
    assert "<script>alert(1)</script>" not in ours and "<b>not bold</b>" not in ours
    assert [i.get("alt") for i in b.find_all("img")] == ["No description has been provided for this image"]
    for sel in ("div.jp-Cell-inputWrapper", "div.jp-OutputArea-output"):
        assert len(b.select(sel)) == len(a.select(sel)) > 0
        assert all(d.get("tabindex") == "0" for d in b.select(sel))
    assert accessible('<img alt="kept" src="a">') == '<img alt="kept" src="a">'
    assert accessible('<div class="jp-OutputArea-output-x">') == '<div class="jp-OutputArea-output-x">'
