"""The interactive runbook and the report, in a real browser: JupyterLab served headless
with a token of its own, driven by Debian's headless Chromium (Selenium, chromedriver).

Stage 01 with ``interactive = True`` is opened as an engineer would and run with Run All:
the kernel "Nested NVMe runbook" starts, the form shows the parameter file's values, a bad
value is refused with the schema's own message and changes nothing, a good one is applied,
step 1's button says what it will do and runs only after Confirm, and the check table
appears. Then report.html of a real stage-01 run is checked the same way: its table of
contents links and its "Hide code" button. Screenshots go into each test's run folder
(under pytest's tmp dir; its path is printed) and are copied to outputs/test-artifacts/browser/.
With RUNBOOK_DOC_SHOTS=1 the README's two pictures are copied to docs/img: interactive-form.png
from here, report.png from check_report_in_browser (the lab test's full run, which comes later
in the suite, replaces this file's stage-01 one)."""
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from pydantic import ValidationError

import browser
from helpers import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "outputs" / "test-artifacts" / "browser"
LAB = ROOT / "parameters" / "lab.yaml"
STAGE = "01_check_host.ipynb"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180),
              pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ok")]


def _interactive_copy(nb_dir: Path, run: Path) -> Path:
    """Stage 01 as an engineer opens it: its parameters cell set to the lab's file, this
    run's state and interactive = True (nothing else changed)."""
    nb = nbformat.read(ROOT / "notebooks" / STAGE, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {"params_file": repr(str(LAB)), "state_file": repr(str(run / "state.json")), "interactive": "True"}
    for name, value in values.items():
        cell.source, n = re.subn(rf"^({name}: \w+ = )[^#\n]*?(\s*#|$)", rf"\g<1>{value}\2", cell.source, flags=re.M)
        assert n == 1, f"no {name} in the parameters cell:\n{cell.source}"
    nb_dir.mkdir(parents=True)
    out = nb_dir / STAGE
    nbformat.write(nb, out)
    return out


def _refusal(section: str, name: str, value) -> str:
    """The line the schema itself gives for this bad value (what a batch run says too)."""
    data = params_mod.load(LAB).model_dump(mode="json")
    data[section][name] = value
    with pytest.raises(ValidationError) as e:
        params_mod.Params.model_validate(data)
    err = next(x for x in e.value.errors() if x["loc"] == (section, name))
    return f"{section}.{name}: {params_mod.explain(err)}"


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    yield run
    print(f"\nbrowser test run folder (screenshots): {run}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for shot in [*run.glob("*.png"), *run.glob("failure.html")]:
        shutil.copyfile(shot, ARTIFACTS / shot.name)


def test_stage_01_interactive_in_jupyterlab(tmp_path, run):
    lab = yaml.safe_load(LAB.read_text())
    _interactive_copy(tmp_path / "notebooks", run)
    state = run / "state.json"
    started = time.monotonic()
    with browser.jupyterlab(tmp_path / "notebooks", tmp_path / "jupyter") as (base, token), \
            browser.chromium(tmp_path / "chromium" / "profile") as d:
        try:
            _drive(d, f"{base}/lab/tree/{STAGE}?token={token}", lab, state, run)
        except BaseException:
            with contextlib.suppress(Exception):  # what the page showed, next to the screenshots
                browser.shot(d, run / "failure.png")
                (run / "failure.html").write_text(d.page_source)
            raise
    print(f"interactive stage 01 in JupyterLab and Chromium: {time.monotonic() - started:.0f} s")
    browser.publish({"interactive-form.png": run / "interactive-form.png"})


def _drive(d, url, lab, state, run):
    """What an engineer does in JupyterLab with stage 01, checked at each step."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    wait = lambda what, cond, timeout=30: browser.wait_for(d, what, cond, timeout)  # noqa: E731
    xp = lambda path: d.find_elements(By.XPATH, path)  # noqa: E731
    d.get(url)

    # the kernel registered by setup starts, by its display name
    wait("the notebook with its kernel 'Nested NVMe runbook' idle", lambda _: xp(
        "//div[contains(@class,'jp-NotebookPanel')]//*[contains(@class,'jp-Toolbar-kernelName')]"
        "[normalize-space()='Nested NVMe runbook']") and xp(
        "//div[contains(@class,'jp-NotebookPanel')]//*[@data-status='idle']"), 60)

    # more room for the notebook: the file browser collapsed, as its icon does
    xp("//*[contains(@class,'jp-SideBar') and contains(@class,'jp-mod-left')]//li[@data-id='filebrowser']")[0].click()
    wait("the file browser to collapse", lambda _: not any(
        e.is_displayed() for e in xp("//*[contains(@class,'jp-FileBrowser')]")), 10)

    # Run All, from JupyterLab's Run menu
    wait("the Run menu", lambda _: xp("//li[contains(@class,'lm-MenuBar-item')][normalize-space()='Run']"))[0].click()
    wait("Run All Cells in the Run menu", lambda _: xp(
        "//li[contains(@class,'lm-Menu-item')][.//div[normalize-space()='Run All Cells']]"), 10)[0].click()

    field = lambda name: xp(  # noqa: E731  (a form row: its label, then its input)
        f"//div[contains(@class,'widget-inline-hbox')][./label[normalize-space()='{name}']]//input")
    button = lambda label: xp(f"//button[contains(@class,'jupyter-button')][normalize-space()='{label}']")  # noqa: E731
    memory = wait("the form", lambda _: field("memory_mib"), 60)[0]
    wait("step 1's button", lambda _: button("Read and judge the host"), 30)

    # the form shows the parameter file's values
    assert memory.get_attribute("value") == str(lab["l1"]["memory_mib"])
    assert field("cores")[0].get_attribute("value") == str(lab["l1"]["cores"])
    assert field("kvm_smoke_timeout_s")[0].get_attribute("value") == str(lab["host"]["kvm_smoke_timeout_s"])
    assert field("serial")[0].get_attribute("value") == lab["nvme"]["serial"]
    assert field("libvirt_uri")[0].get_attribute("value") == lab["host"]["libvirt_uri"]
    assert Path(field("backing_file")[0].get_attribute("value")) == Path(lab["nvme"]["backing_file"])

    def type_into(el, text):
        """Replace a field's value as a user does; the widget sends it to the kernel on leaving it."""
        d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", el)
        wait("the field to take the focus", lambda _: d.switch_to.active_element == el, 5)
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(text)
        wait(f"the field to show {text!r}", lambda _: el.get_property("value") == text, 5)
        el.send_keys(Keys.TAB)

    message = lambda: " ".join(  # noqa: E731
        e.text for e in xp("//button[normalize-space()='Apply']/../following-sibling::div"
                           "[contains(@class,'widget-html')]") if e.text)

    # a bad value: the schema's own message, and nothing changes
    refused = _refusal("l1", "memory_mib", 100)
    type_into(memory, "100")
    button("Apply")[0].click()
    wait(f"the form to say {refused!r}", lambda _: refused in message(), 15)
    # the README's picture: the end of the form, its message and step 1
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button("Apply")[0])
    browser.shot(d, run / "interactive-form.png")

    # step 1 only reads: a click shows its plan (what it reads, the sizes it judges against) and reads
    step = button("Read and judge the host")[0]
    step.click()
    preview = lambda: d.execute_script(  # noqa: E731  (read at once: the output is redrawn on each click)
        "const b = document.evaluate(\"//button[normalize-space()='Read and judge the host']\", document, null,"
        " XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;"
        "return b ? b.parentElement.parentElement.innerText : '';")
    table = lambda: xp("//table[.//th[normalize-space()='check'] and .//th[normalize-space()='verdict']]")  # noqa: E731
    wait("step 1's plan", lambda _: "Plan of 'Read and judge the host': reads:" in preview(), 15)
    assert f"L1's {lab['l1']['memory_mib']} MiB" in preview(), f"the refused value changed the stage: {preview()}"
    assert not button("Confirm")[0].is_displayed()   # a step that only reads needs no Confirm
    wait("the check table", lambda _: table(), 60)

    # a good value is applied, and the step uses it
    type_into(memory, "1024")
    button("Apply")[0].click()
    wait("the form to say the parameters were applied", lambda _: "parameters valid and applied" in message(), 15)
    assert refused not in message()
    step = button("Read and judge the host")[0]
    step.click()
    wait("the plan with the applied value", lambda _: "L1's 1024 MiB" in preview(), 15)
    assert str(state) in preview()   # the plan names the run state the verdicts go to
    rows = wait("the check table", lambda _: table() and "L1 needs 1024 MiB" in table()[0].text
                and table()[0].find_elements(By.XPATH, ".//tbody/tr"), 60)
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", step)
    browser.shot(d, run / "step-preview.png")
    cells = {r.find_elements(By.TAG_NAME, "td")[0].text: r.find_elements(By.TAG_NAME, "td")
             for r in rows}
    assert "L1 needs 1024 MiB" in cells["memory"][1].text  # the applied value, not the file's nor the refused one
    assert all(c[2].text in ("pass", "warn", "fail", "skip") for c in cells.values())
    recorded = json.loads(state.read_text())["host"]
    assert [c["name"] for c in recorded["checks"]] == list(cells)
    d.execute_script("arguments[0].scrollIntoView({block: 'start'})", table()[0])
    browser.shot(d, run / "check-table.png")

    # the read-only steps run on one click
    button("Show the accelerator")[0].click()
    wait("the accelerator", lambda _: xp(f"//*[contains(text(), 'L1 will run under {recorded['accel'].upper()}')]"), 15)
    button("Verdict")[0].click()
    wait("the verdict", lambda _: xp("//*[contains(text(), 'check failed on the host') or "
                                     "contains(text(), 'check(s) failed on the host')]"), 15)



def test_report_of_a_real_run_in_chromium(tmp_path, run):
    """report.html of a real stage-01 run (the lab test calls the same check on its own run)."""
    r = subprocess.run([sys.executable, "-m", "helpers", "run", "--stages", "01", "--outputs", str(tmp_path),
                        "--run-id", "report", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shots = browser.check_report_in_browser(tmp_path / "report", run)
    assert [s.name for s in shots] == ["report-stage-01.png", "report.png"]
    assert all(20_000 < s.stat().st_size < 200_000 for s in shots), [(s, s.stat().st_size) for s in shots]
