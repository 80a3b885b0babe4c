"""A real browser for the tests: JupyterLab served headless on 127.0.0.1 with a token of
its own, Debian's Chromium driven by Selenium through Debian's chromedriver (nothing is
downloaded), and the check of a run's report.html that the browser test and the lab
test share: ``check_report_in_browser(run_dir, shots_dir)``.

Every process started here runs in a session of its own and is killed by its process
group when the ``with`` block ends, whatever happened inside it."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WIDTH, HEIGHT = 1000, 1000  # the window (the screenshots are 1000 px wide, the page about 860 px high)
DOC_SHOTS = ROOT / "docs" / "img"


def missing() -> str:
    """Why the browser tests cannot run here ('' when they can)."""
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromium-driver are not installed (scripts/setup.sh --test installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return ""


def _kill_group(proc: subprocess.Popen | None) -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
            os.killpg(proc.pid, 0)  # children of the group may outlive its leader
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        time.sleep(0.5)


def _kill_kernels(runtime: Path) -> None:
    """Kernels run in sessions of their own: kill any left by a server that did not shut them
    down, known by their connection file in this server's own runtime dir."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(runtime) in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(notebook_dir: Path, home: Path, timeout: float = 60):
    """JupyterLab on 127.0.0.1 (a free port, a fresh token, --allow-root, --no-browser) with its
    runtime, config, data, settings and workspaces under ``home``; the kernels it starts see
    this checkout's helpers first. Yields the URL of the notebook dir, token included."""
    token = secrets.token_hex(16)
    port = _free_port()
    for d in ("runtime", "config/labconfig", "data", "settings", "workspaces"):
        (home / d).mkdir(parents=True, exist_ok=True)
    # no news pop-up over the page
    (home / "config" / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_PLATFORM_DIRS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    log = open(home / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={notebook_dir}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--ServerApp.terminals_enabled=False"],
        cwd=notebook_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer on {base} within {timeout} s; "
                                   f"its log:\n{(home / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        _kill_group(proc)
        _kill_kernels(home / "runtime")
        log.close()


@contextlib.contextmanager
def chromium(profile: Path, width: int = WIDTH, height: int = HEIGHT):
    """Headless Chromium through chromedriver (both Debian's); quit and killed at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.parent.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"),
                      popen_kw={"start_new_session": True})
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=opts)
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        try:
            if driver is not None:
                driver.quit()
        finally:
            _kill_group(getattr(service, "process", None))


def wait_for(driver, what: str, condition, timeout: float = 30):
    """Wait for ``condition(driver)`` to be truthy; fail saying ``what`` was awaited."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:  # outputs are redrawn while they are read: a stale element is read again
        return WebDriverWait(driver, timeout, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"waited {timeout} s for {what}") from None


def shot(driver, path: Path, element=None) -> Path:
    """A screenshot (of the window, or of one element) as a small PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png = (element or driver).screenshot_as_png if element is not None else driver.get_screenshot_as_png()
    path.write_bytes(png)
    _shrink(path)
    return path


def _shrink(path: Path, width: int = WIDTH) -> None:
    """At most ``width`` px wide, 256 colours, optimized: screenshots of pages stay well under 200 KB."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def publish(shots: dict[str, Path]) -> None:
    """With RUNBOOK_DOC_SHOTS=1, copy the screenshots the README shows into docs/img."""
    if os.environ.get("RUNBOOK_DOC_SHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        for name, src in shots.items():
            shutil.copyfile(src, DOC_SHOTS / name)


def _in_view(driver, element_id: str) -> bool:
    """The element is at the top of the window, or the page is scrolled as far as it goes."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); if (!e) return false;"
        "const top = e.getBoundingClientRect().top;"
        "const end = window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 2;"
        "return Math.abs(top) <= 4 || (end && top >= 0 && top < window.innerHeight);", element_id)


def check_report_in_browser(run_dir, shots_dir) -> list[Path]:
    """Open ``run_dir``/report.html in headless Chromium and check it works, not only that it
    loads: every link of its table of contents targets its stage's section and scrolls it to the
    top of the window, and the "Hide code" button hides every code cell (and shows them again).
    Saves ``report-stage-NN.png`` (the first stage, reached from the contents) and ``report.png``
    (the top of the report, code hidden) into ``shots_dir``; returns their paths. With
    RUNBOOK_DOC_SHOTS=1 report.png is also copied to docs/img (the README's picture)."""
    from selenium.webdriver.common.by import By

    run_dir, shots_dir = Path(run_dir), Path(shots_dir)
    report = run_dir / "report.html"
    assert report.exists(), f"no report.html in {run_dir}"
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    shots_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    with contextlib.ExitStack() as stack:
        import tempfile
        profile = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="report-chromium-"))) / "profile"
        driver = stack.enter_context(chromium(profile))
        driver.get(report.as_uri())
        wait_for(driver, "the report's table of contents",
                 lambda d: d.find_elements(By.CSS_SELECTOR, "table.runbook-toc a[href^='#stage-']"), 30)

        links = driver.find_elements(By.CSS_SELECTOR, "table.runbook-toc a[href^='#stage-']")
        targets = [a.get_attribute("href").split("#", 1)[1] for a in links]
        from helpers.report import split_teardown
        stages = split_teardown(summary)[0].get("stages")  # a later teardown has teardown.html of its own
        if stages:
            assert targets == [f"stage-{s['stage']}" for s in stages], targets
        assert targets, "the table of contents links no stage"
        for target in reversed(targets):  # from the last: each click must scroll
            driver.execute_script("window.scrollTo(0, 0)")
            wait_for(driver, "the top of the report", lambda d: d.execute_script("return window.scrollY") == 0, 5)
            link = driver.find_element(By.CSS_SELECTOR, f"table.runbook-toc a[href='#{target}']")
            link.click()
            wait_for(driver, f"the click on {link.text!r} to bring #{target} to the top",
                     lambda d: _in_view(d, target) and d.execute_script("return location.hash") == f"#{target}", 10)
            section = driver.execute_script(  # the heading right after the anchor names the stage
                "let e = document.getElementById(arguments[0]);"
                "const h = e.closest('.jp-Cell, .jp-RenderedHTMLCommon') || e.parentElement;"
                "return h.querySelector('h1') ? h.querySelector('h1').textContent : h.textContent;", target)
            assert f"Stage {target[len('stage-'):]}" in section, f"#{target} is not the section of its stage: {section!r}"
        saved.append(shot(driver, shots_dir / f"report-{targets[0]}.png"))

        driver.execute_script("window.scrollTo(0, 0)")
        code = driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputArea")
        assert code and any(c.is_displayed() for c in code), "the report shows no code to hide"
        toggle = driver.find_element(By.ID, "code-toggle")
        assert toggle.text == "Hide code", toggle.text
        toggle.click()
        wait_for(driver, "'Hide code' to hide every code cell", lambda d: not any(c.is_displayed() for c in code), 5)
        assert toggle.text == "Show code", toggle.text
        outputs = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
        assert any(o.is_displayed() for o in outputs), "hiding the code hid the outputs too"
        prose = driver.find_elements(By.CSS_SELECTOR, "table.runbook-toc, .jp-MarkdownCell h1")
        assert prose and all(p.is_displayed() for p in prose), "hiding the code hid the contents and the stage titles"
        driver.execute_script("window.scrollTo(0, 0)")
        wait_for(driver, "the top of the report", lambda d: d.execute_script("return window.scrollY") == 0, 5)
        saved.append(shot(driver, shots_dir / "report.png"))
        toggle.click()
        wait_for(driver, "'Show code' to show the code again", lambda d: all(c.is_displayed() for c in code[:3]), 5)
    publish({"report.png": shots_dir / "report.png"})
    return saved


if __name__ == "__main__":  # [RUNBOOK_DOC_SHOTS=1] .venv/bin/python tests/browser.py RUN_DIR SHOTS_DIR
    for p in check_report_in_browser(Path(sys.argv[1]), Path(sys.argv[2])):
        print(p)
