"""The whole lab with L0 reached only over SSH, for real.

The test starts an sshd of its own on 127.0.0.1:2230 (its own host key and a
key made for the test, key-only, nothing of the system's sshd touched) and runs
stages 01-05, then 99, with ``host.ssh`` pointing at it. L0 is this very
machine, so the assertion that matters is that the runbook's process never
touched L0 itself. The runner runs in a mount namespace of its own where L0's
side is hidden from it: empty tmpfs over /var/lib (workdir, backing file,
libvirt's images), /var/cache (the lab image cache) and /run/libvirt (the local
libvirt sockets), with HOME, TMPDIR and its working directory in the test's tmp
folder and LIBVIRT_DEFAULT_URI unset. The sshd runs outside that namespace. So:

- a local file call on L0's paths would land in the hidden tmpfs: the run would
  fail (L1's disk, console log and keys would not be where libvirt and L1 look),
  and the tmpfs would not be empty at the end (asserted: it is empty);
- a local libvirt connection would find no socket: the run would fail;
- the run's files appear in the real workdir (asserted after the run), made by
  the SSH sessions whose logins the sshd's own log shows (asserted).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import params as params_mod
from helpers.access import l1_guest

ROOT = Path(__file__).resolve().parent.parent
NAME, L1_PORT, SSHD_PORT = "nested-kvm-remote", 2227, 2230
WORKDIR = Path("/var/lib/nested-nvme-remote")
HIDDEN = ["/var/lib", "/var/cache", "/run/libvirt"]

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]


def start_sshd(d: Path, port: int = SSHD_PORT) -> subprocess.Popen:
    """A real OpenSSH server on 127.0.0.1:port: its own host key, key-only, root by key
    (also the fleet's lab test's, one per L0 it reaches)."""
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"l0-test-{name}",
                        "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    pub = " ".join((d / "host.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub}\n")
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile {d}/sshd.pid
AllowTcpForwarding yes
MaxSessions 100
MaxStartups 100:30:200
LogLevel VERBOSE
UsePAM no
""")
    subprocess.run(["mkdir", "-p", "/run/sshd"], check=True)
    proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"),
                             "-E", str(d / "sshd.log")])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the test's sshd did not listen on 127.0.0.1:{port}: {(d / 'sshd.log').read_text()}")


def write_params(d: Path) -> Path:
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["l1"]["name"] = NAME
    data["l1"]["network"]["ssh_port"] = L1_PORT
    data["host"]["workdir"] = str(WORKDIR)
    data["nvme"]["backing_file"] = str(WORKDIR / "nvme.raw")
    data["host"]["ssh"] = {"address": "127.0.0.1", "port": SSHD_PORT, "user": "root",
                           "identity": str(d / "user"), "known_hosts": str(d / "known_hosts")}
    f = d / "lab-remote.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def isolated_runner(d: Path, outputs: Path, *args) -> subprocess.CompletedProcess:
    """The runner in a mount namespace where L0's paths and local libvirt are hidden;
    it lists at the end what it left in them (nothing, when it touched L0 only over SSH)."""
    home, tmp, cwd = d / "home", d / "tmp", d / "elsewhere"
    for p in (home, tmp, cwd):
        p.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI")}
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(ROOT))
    hide = "; ".join(f"mount -t tmpfs -o mode=755 l0-hidden {h}" for h in HIDDEN)
    run = " ".join(["exec", sys.executable, "-m", "helpers", "run", "--params", str(d / "lab-remote.yaml"),
                    "--outputs", str(outputs), *args])
    script = (f"set -e; {hide}; set +e; ( {run} ); rc=$?; "
              f"echo '== left in the hidden L0 paths:'; find {' '.join(HIDDEN)} -mindepth 1 | head -50; "
              "echo '== end'; exit $rc")
    print("$", script, flush=True)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                          cwd=cwd, env=env, text=True, capture_output=True, timeout=3000)


# The runner's own use of a hidden path, not L0's: fontconfig (matplotlib's plots in
# stage 05's kernel) writes its cache into /var/cache/fontconfig when that is writable.
RUNNER_OWN = ("/var/cache/fontconfig",)


def leftovers(r: subprocess.CompletedProcess) -> list[str]:
    out = r.stdout.split("== left in the hidden L0 paths:\n", 1)[-1]
    return [line for line in out.split("== end", 1)[0].splitlines()
            if line.strip() and not line.startswith(RUNNER_OWN)]


def virsh(*args):
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    if not shutil.which("unshare") or not Path("/usr/sbin/sshd").exists():
        pytest.fail("unshare (util-linux) and sshd (openssh-server) are needed: scripts/setup.sh installs them")
    d = tmp_path_factory.mktemp("remote-l0")
    d.chmod(0o700)
    sshd = start_sshd(d)
    params = write_params(d)
    outputs = d / "outputs"
    try:
        pre = isolated_runner(d, outputs, "--stages", "99", "--run-id", "pre-clean")
        print(pre.stdout[-1500:], pre.stderr[-1500:])
        r = isolated_runner(d, outputs, "--run-id", "remote")
        print(r.stdout[-6000:], r.stderr[-3000:])
        live = {"files": sorted(os.listdir(WORKDIR)) if WORKDIR.exists() else [],
                "state": virsh("domstate", NAME).stdout.strip()}
        p = params_mod.load(params)
        before = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = str(d / "home" / ".cache")  # where the runner kept L1's key and host key
        try:
            l1 = l1_guest(p)
        finally:
            if before is None:
                os.environ.pop("XDG_CACHE_HOME")
            else:
                os.environ["XDG_CACHE_HOME"] = before
        live["cmdline"] = l1.run("cat /proc/cmdline", timeout=60).out
        live["l1_jump"] = l1.jump
        yield {"d": d, "run": outputs / "remote", "result": r, "live": live, "pre": pre}
    finally:
        if virsh("dominfo", NAME).returncode == 0:  # test_06 did not get to tear it down
            t = isolated_runner(d, outputs, "--stages", "99", "--run-id", "final-clean")
            print(t.stdout[-2000:], t.stderr[-2000:])
        sshd.terminate()
        sshd.wait(10)


def test_01_stages_01_to_05_pass_with_l0_over_ssh(remote):
    r = remote["result"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = json.loads((remote["run"] / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("01", "passed"), ("02", "passed"), ("03", "passed"), ("04", "passed"), ("05", "passed")]


def test_02_the_runner_left_nothing_on_l0_paths_of_its_own(remote):
    """Everything the run made on L0 went through SSH: the runner's view of L0's
    paths (hidden tmpfs) is still empty, while the real workdir holds the run's files."""
    assert leftovers(remote["result"]) == [] and leftovers(remote["pre"]) == []
    files = remote["live"]["files"]
    for f in (f"{NAME}.qcow2", f"{NAME}-console.log", "known_hosts", "lab_key", "nvme.raw"):
        assert f in files, files
    assert remote["live"]["state"] == "running"


def test_03_the_sshd_saw_the_runbooks_sessions(remote):
    """The commands on L0 were sessions of the test's sshd: a login by the test's key (SSH
    multiplexing keeps one connection for the runbook's commands, libvirt's qemu+ssh and
    the jumps into L1) carrying the commands (about 90 for stages 01-05 on 2026-12-03:
    facts are read many files per command; forwarded connections into L1 are not logged
    as sessions)."""
    log = (remote["d"] / "sshd.log").read_text()
    assert log.count("Accepted publickey for root from 127.0.0.1") >= 1, log[-3000:]
    assert log.count("Starting session: command for root from 127.0.0.1") >= 30, log[-3000:]
    st = json.loads((remote["run"] / "state.json").read_text())
    assert "ssh" not in st.get("l1", {}) and "lab" not in st  # the way in is derived, not stored
    assert st["accel"] == "tcg"


def test_04_l1_is_reached_through_l0_and_has_the_iommu_on(remote):
    assert remote["live"]["l1_jump"] is not None and remote["live"]["l1_jump"].port == SSHD_PORT
    assert "intel_iommu=on" in remote["live"]["cmdline"]


def test_05_results_were_written(remote):
    res = json.loads((remote["run"] / "results.json").read_text())
    assert "L2" in {r["layer"] for r in res["runs"]}


def test_06_teardown_over_ssh_gives_everything_back(remote):
    """Stage 99 through the same isolation: L1 undefined, the run's files gone from L0's
    workdir (removed over SSH), and this machine's copy of the lab key gone too."""
    d = remote["d"]
    t = isolated_runner(d, d / "outputs", "--stages", "99")
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]
    assert leftovers(t) == []
    assert virsh("dominfo", NAME).returncode != 0
    left = sorted(os.listdir(WORKDIR)) if WORKDIR.exists() else []
    assert not set(left) & {f"{NAME}.qcow2", f"{NAME}-console.log", "known_hosts", "lab_key"}, left
    assert not list((d / "home" / ".cache" / "nested-nvme").rglob("lab_key"))
