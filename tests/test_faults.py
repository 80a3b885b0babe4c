"""Faults a user meets, injected one after another into one real lab, each named
as what it is and each recovered the documented way:

- a full filesystem under the workdir and a forwarded SSH port held by another
  program: refused before anything is made;
- L0's libvirtd restarted while stage 02 waits for L1;
- the runner killed (SIGKILL) while stage 03 waits for L1's reboot, then
  `--from 03`: nothing that must happen once happens twice;
- Ctrl-C (SIGINT) while stage 04 waits for L2, then `--from 04`;
- L1's sshd stopped: named as lost SSH, `--from 02` brings it back;
- L1 destroyed behind the runbook's back: named, `--from 02` brings it back;
- a second run while one runs (refused, naming it) and a dead run's lock (taken over);
- stage 02 failing half-way (L1's boot timing out), then `--stages 99` leaves nothing.

Its own L1 name, port and folder (nested-kvm-faults, 2225, /var/lib/nested-nvme-faults),
so neither `make run`'s lab nor the main lab test is touched. Real parts only:
libvirtd, QEMU, L1 under TCG, L2 under KVM in L1.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NAME = "nested-kvm-faults"
PORT = 2225
WORKDIR = Path("/var/lib/nested-nvme-faults")
RUN = "faults"

pytestmark = [pytest.mark.lab, pytest.mark.faults, pytest.mark.timeout(3600)]


def write_params(path: Path, **changes) -> Path:
    """parameters/lab.yaml with this module's own names, and ``section={key: value}`` changes."""
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["l1"]["name"] = NAME
    data["l1"]["network"]["ssh_port"] = PORT
    data["host"]["workdir"] = str(WORKDIR)
    data["nvme"]["backing_file"] = str(WORKDIR / "nvme.raw")
    for section, values in changes.items():
        data[section].update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def cmd(params: Path, outputs: Path, *args) -> list[str]:
    return [sys.executable, "-m", "helpers", "run", "--params", str(params), "--outputs", str(outputs), *args]


def runner(params: Path, outputs: Path, *args, timeout=1500) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd(params, outputs, *args)), flush=True)
    r = subprocess.run(cmd(params, outputs, *args), cwd=ROOT, text=True, capture_output=True, timeout=timeout)
    print(r.stdout[-1500:], r.stderr[-1500:], flush=True)
    return r


class Running:
    """A runner in the background whose output is read line by line as it comes."""

    def __init__(self, params: Path, outputs: Path, *args):
        print("$ (background)", " ".join(cmd(params, outputs, *args)), flush=True)
        self.p = subprocess.Popen(cmd(params, outputs, *args), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, bufsize=1)
        self.lines: list[str] = []
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    def _read_err(self):
        self.err = self.p.stderr.read()

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if re.search(pattern, line):
                    return line
            if self.p.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line /{pattern}/ in the runner's output:\n{''.join(self.lines[-30:])}\n{self.err[-2000:]}")

    def finish(self, timeout: float = 1500) -> int:
        rc = self.p.wait(timeout=timeout)
        time.sleep(0.5)  # the reader threads drain the pipes
        print("".join(self.lines)[-1500:], self.err[-1500:], flush=True)
        return rc


def virsh(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=120)


def summary(outputs: Path, run: str = RUN) -> dict:
    return json.loads((outputs / run / "summary.json").read_text())


def state(outputs: Path, run: str = RUN) -> dict:
    return json.loads((outputs / run / "state.json").read_text())


def l1_run(outputs: Path, command: str, params: Path) -> str:
    """A command in L1 over SSH, the runbook's own way in."""
    from helpers import params as params_mod
    from helpers.access import l1_guest
    from helpers.state import State
    l1 = l1_guest(params_mod.load(params), State(outputs / RUN / "state.json"))
    return l1.run(command, timeout=120, check=True).out


def l1_agent_run(command: str) -> None:
    """A command in L1 through its guest agent (works without SSH)."""
    from helpers.ops.l1 import l1_agent
    from helpers.virt import PyLibvirt
    l1_agent(PyLibvirt(), NAME).run(command, timeout=60)


def restart_libvirtd() -> None:
    """Restart L0's libvirtd the way an administrator would."""
    from helpers.lab import daemons
    if daemons.systemd_is_init():
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
        return
    subprocess.run(["pkill", "-x", "libvirtd"])
    # as `systemctl restart` does: the old daemon gone before the new one starts (it holds
    # /run/libvirtd.pid until then; libvirtd forces its own shutdown after 15 s, more when busy:
    # 19 s once here, and a new daemon then failed "Failed to acquire pid file")
    for _ in range(600):
        if not daemons.running("libvirtd"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("libvirtd did not stop within 60 s of SIGTERM")
    subprocess.run(["libvirtd", "-d"], check=True)


def changes_of(outputs: Path, stage: str) -> dict[str, bool]:
    """Step label -> did it change something, as recorded for ``stage``."""
    return {step: any(c["changed"] for c in cs) for step, cs in state(outputs).get("changes", {}).get(stage, {}).items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    params = write_params(base / "faults.yaml")
    outputs = base / "outputs"
    runner(params, outputs, "--stages", "99", "--run-id", "pre-clean")
    yield {"params": params, "outputs": outputs, "base": base}
    runner(params, outputs, "--stages", "99", "--run-id", "final-clean")


# ------------------------------------------------------------ refused before anything is made

def _small_fs(where: Path, size: str) -> Path:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    return where


def test_1_a_full_filesystem_under_the_workdir_is_refused_before_anything_is_made(lab, tmp_path):
    # far too small: the runner refuses before any stage, naming the filesystem
    tiny = _small_fs(tmp_path / "tiny", "64m")
    # room for the backing file but not for L1's overlay and logs beside it: stage 02 refuses
    tight = _small_fs(tmp_path / "tight", "1100m")
    try:
        params = write_params(tmp_path / "tiny.yaml", host={"workdir": str(tiny / "work")},
                              nvme={"backing_file": str(tiny / "work" / "nvme.raw")})
        r = runner(params, lab["outputs"], "--stages", "01,02", "--run-id", "tiny")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"GiB are free on {tiny}:" in r.stderr and not (lab["outputs"] / "tiny").exists()
        params = write_params(tmp_path / "tight.yaml", host={"workdir": str(tight / "work")},
                              nvme={"backing_file": str(tight / "work" / "nvme.raw")})
        r = runner(params, lab["outputs"], "--stages", "01,02", "--run-id", "tight")
        assert r.returncode == 1 and "Traceback" not in r.stderr and "FAILED at stage 02" in r.stderr
        assert f"not enough free space on the filesystem at {tight}" in r.stderr and "nothing was created" in r.stderr
        assert list(tiny.iterdir()) == [] and list(tight.iterdir()) == []  # nothing made there
        assert virsh("dominfo", NAME).returncode != 0  # nothing defined
    finally:
        subprocess.run(["umount", "-l", str(tiny)])
        subprocess.run(["umount", "-l", str(tight)])


def test_2_the_ssh_port_held_by_another_program_is_refused_naming_it(lab):
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time\ns = socket.socket()\n"
                               f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', {PORT}))\n"
                               "s.listen()\nprint('listening', flush=True)\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "listening"
        r = runner(lab["params"], lab["outputs"], "--stages", "01,02", "--run-id", "port")
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr
        assert str(PORT) in r.stderr and str(holder.pid) in r.stderr
        assert virsh("dominfo", NAME).returncode != 0
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------ the lab, and faults in it

def test_3_libvirtd_restarted_while_stage_02_waits_for_l1(lab):
    run = Running(lab["params"], lab["outputs"], "--stages", "01,02", "--run-id", RUN)
    run.wait_for_line(rf"{NAME}: guest agent: waiting", 900)
    time.sleep(3)
    restart_libvirtd()
    rc = run.finish()
    if rc != 0:  # the step may fail instead, naming libvirtd; a rerun then completes
        assert "libvirtd" in run.err, run.err[-2000:]
        assert runner(lab["params"], lab["outputs"], "--stages", "02", "--run-id", RUN).returncode == 0
    assert summary(lab["outputs"])["stages"][-1]["status"] == "passed"
    assert virsh("domstate", NAME).stdout.strip() == "running"


def test_4_the_runner_killed_during_l1s_reboot_then_from_03_does_nothing_twice(lab):
    run = Running(lab["params"], lab["outputs"], "--from", "03", "--run-id", RUN)
    run.wait_for_line(r"l1: reboot: waiting", 900)
    run.p.send_signal(signal.SIGKILL)
    run.p.wait()
    first = changes_of(lab["outputs"], "03")
    assert any(first.values()), first  # the kernel argument was set before the reboot
    r = runner(lab["params"], lab["outputs"], "--stages", "03", "--run-id", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"took over the lock of run {RUN}" in r.stdout
    assert "stage 03's earlier attempt was killed" in r.stdout
    second = changes_of(lab["outputs"], "03")
    twice = [step for step in first if first[step] and second.get(step)]
    assert twice == []
    s03 = next(s for s in summary(lab["outputs"])["stages"] if s["stage"] == "03")
    assert s03["status"] == "passed" and s03["earlier"][0]["status"] == "killed"
    assert (lab["outputs"] / RUN / s03["earlier"][0]["notebook"]).exists()
    grub = l1_run(lab["outputs"], "grep -o 'intel_iommu=on' /etc/default/grub | wc -l", lab["params"])
    assert grub.strip() == "1"
    installs = l1_run(lab["outputs"], "grep -c ' install qemu-utils' /var/log/dpkg.log || true", lab["params"])
    assert installs.strip() == "1"
    assert "intel_iommu=on" in l1_run(lab["outputs"], "cat /proc/cmdline", lab["params"])


def test_5_ctrl_c_while_stage_04_waits_for_l2_stops_at_once_and_from_04_completes(lab):
    run = Running(lab["params"], lab["outputs"], "--from", "04", "--run-id", RUN)
    run.wait_for_line(r"guest agent through L1: waiting", 900)
    t0 = time.monotonic()
    run.p.send_signal(signal.SIGINT)
    rc = run.finish(timeout=60)
    assert time.monotonic() - t0 < 20
    assert rc == 130 and "INTERRUPTED at stage 04" in run.err and f"--run-id {RUN} --from 04" in run.err
    assert "Traceback" not in run.err
    st = state(lab["outputs"])  # intact and readable
    assert st["nvme"]["bdf_in_l1"]
    assert next(s for s in summary(lab["outputs"])["stages"] if s["stage"] == "04")["status"] == "interrupted"
    r = runner(lab["params"], lab["outputs"], "--from", "04", "--run-id", RUN)
    if r.returncode and re.search(r"L2 (crashed|stopped answering)", r.stderr):
        # nested KVM under TCG: L2 hung once during fio in L2 in a CI run (not seen in 10 cold
        # runs); the runbook names it and its HINT is --from 04, which restarts L2. Loudly.
        print("WARNING: L2 crashed or hung under emulation; following the HINT (--from 04)", flush=True)
        r = runner(lab["params"], lab["outputs"], "--from", "04", "--run-id", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((lab["outputs"] / RUN / "results.json").read_text())
    assert {s["layer"] for s in results["summary"]} >= {"L1", "L2"}


def test_6_lost_ssh_into_l1_is_named_and_from_02_brings_it_back(lab):
    l1_agent_run("systemctl stop ssh.service; pkill -x sshd; true")
    time.sleep(2)
    r = runner(lab["params"], lab["outputs"], "--stages", "04", "--run-id", RUN)
    assert r.returncode == 1
    assert "SSH into L1 is lost (127.0.0.1:2225" in r.stderr and "ssh.service is stopped in L1" in r.stderr
    assert "stalled" not in r.stderr and "--from 02" in r.stderr
    r = runner(lab["params"], lab["outputs"], "--from", "02", "--run-id", RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sshd" in state(lab["outputs"])["l1"]["boot"]  # started again through the guest agent


def test_7_l1_destroyed_behind_the_runbooks_back_is_named_and_from_02_brings_it_back(lab):
    assert virsh("destroy", NAME).returncode == 0
    r = runner(lab["params"], lab["outputs"], "--stages", "04", "--run-id", RUN)
    assert r.returncode == 1
    assert f"L1 ({NAME}) is not running: shut off (destroyed); it was stopped outside the runbook" in r.stderr
    assert "--from 02" in r.stderr
    back = Running(lab["params"], lab["outputs"], "--from", "02", "--run-id", RUN)
    back.wait_for_line(r"== stage 02", 120)
    # meanwhile a second run on the same L1 is refused at once, naming the one that runs
    second = runner(lab["params"], lab["outputs"], "--stages", "01", "--run-id", "second")
    assert second.returncode == 2
    assert f"another run is using L1 '{NAME}': run {RUN} (pid {back.p.pid}," in second.stderr
    assert not (lab["outputs"] / "second").exists()
    assert back.finish() == 0, back.err[-3000:]
    st = state(lab["outputs"])
    assert st["l2_verify"]["nvme"]["serial"] == "1234"


def test_8_a_lock_left_by_a_dead_run_is_taken_over_saying_so(lab):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = Path(os.environ.get("NESTED_NVME_LOCK_DIR", "/run/nested-nvme")) / f"{NAME}.lock"  # see conftest.py
    lock.write_text(json.dumps({"pid": int(dead.stdout), "run_id": "gone"}))
    r = runner(lab["params"], lab["outputs"], "--stages", "01", "--run-id", "after-dead")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"NOTE: took over the lock of run gone (pid {int(dead.stdout)}, no longer running)" in r.stdout


def test_9_stage_02_failing_half_way_then_teardown_leaves_nothing(lab, tmp_path):
    assert runner(lab["params"], lab["outputs"], "--stages", "99", "--run-id", RUN).returncode == 0
    quick = write_params(tmp_path / "quick.yaml", l1={"boot_timeout_s": 10})
    r = runner(quick, lab["outputs"], "--stages", "01,02", "--run-id", "half")
    assert r.returncode == 1 and "not ready after 10 s" in r.stderr
    assert virsh("dominfo", NAME).returncode == 0  # defined and started: half-way
    r = runner(quick, lab["outputs"], "--stages", "99", "--run-id", "half")
    assert r.returncode == 0, r.stderr[-2000:]
    assert virsh("dominfo", NAME).returncode != 0
    assert not WORKDIR.exists() or list(WORKDIR.iterdir()) == []
    assert json.loads((lab["outputs"] / "half" / "state.json").read_text()).get("created", {}).get("files", []) == []
