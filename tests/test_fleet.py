"""The fleet (helpers/fleet): Ansible's connection variables mapped to host.ssh, the
per-host parameters merged and checked, refusals, the index, the exit code; and one
real fleet through ansible-playbook in check mode where a refused host and an
unreachable one are reported as such while the other runs."""
import json
import getpass
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import fleet
from helpers.fleet import command as fleet_cmd

ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT = 2252


def lab_base(tmp_path: Path, l1_name: str = "nested-kvm-fleet-a") -> Path:
    """The lab's parameters with this suite's own L1 name, port and workdir."""
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["l1"]["name"] = l1_name
    data["l1"]["network"]["ssh_port"] = 2244
    data["host"]["workdir"] = "/var/lib/nested-nvme-fleet-a"
    data["nvme"]["backing_file"] = "/var/lib/nested-nvme-fleet-a/nvme.raw"
    f = tmp_path / "base.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


# --- mapping Ansible's connection variables -----------------------------------------------------

def test_local_connection_means_l0_is_this_machine():
    assert fleet.host_ssh("localhost", {"ansible_connection": "local"}) is None


def test_connection_variables_become_host_ssh(tmp_path):
    hv = {"ansible_host": "10.0.0.5", "ansible_port": "2201", "ansible_user": "admin",
          "ansible_ssh_private_key_file": "keys/id_ed25519",
          "ansible_ssh_common_args": "-o UserKnownHostsFile=~/fleet_known_hosts -o ServerAliveInterval=5"}
    ssh = fleet.host_ssh("server1", hv, cwd=str(tmp_path))  # relative: to where ansible-playbook started
    assert ssh == {"address": "10.0.0.5", "port": 2201, "user": "admin",
                   "identity": str(tmp_path / "keys" / "id_ed25519"),
                   "known_hosts": str(Path("~/fleet_known_hosts").expanduser())}


def test_defaults_are_ansibles_own():
    ssh = fleet.host_ssh("server2.example.com", {"ansible_port": 22})
    assert ssh == {"address": "server2.example.com", "port": 22, "user": getpass.getuser()}


def test_no_address_port_user_or_key_means_the_users_ssh_config_entry():
    assert fleet.host_ssh("lab-server", {}) == {"config_host": "lab-server"}


def test_host_ssh_given_in_nested_nvme_wins():
    given = {"config_host": "my-entry"}
    assert fleet.host_ssh("s", {"ansible_host": "1.2.3.4"}, given) == given
    ssh = fleet.host_ssh("s", {"ansible_host": "1.2.3.4"}, {"known_hosts": "/etc/ssh/fleet_known_hosts"})
    assert ssh["known_hosts"] == "/etc/ssh/fleet_known_hosts" and ssh["address"] == "1.2.3.4"


@pytest.mark.parametrize("hv", [{"ansible_host": "h", "ansible_ssh_common_args": "-o StrictHostKeyChecking=no"},
                                {"ansible_host": "h", "ansible_ssh_host_key_checking": False}])
def test_host_key_checking_turned_off_is_refused(hv):
    with pytest.raises(fleet.Refused, match="never accepts an unknown host key"):
        fleet.host_ssh("h", hv)


def test_another_connection_plugin_is_refused():
    with pytest.raises(fleet.Refused, match="ansible_connection `docker`"):
        fleet.host_ssh("h", {"ansible_connection": "docker"})


# --- merging and refusing -----------------------------------------------------------------------

def test_nested_nvme_is_merged_key_by_key_over_the_base():
    base = {"l1": {"name": "a", "cores": 2, "network": {"ssh_port": 2222, "mode": "user"}}, "lab": True}
    merged = fleet.host_params("h", base, {"ansible_connection": "local",
                                           "nested_nvme": {"l1": {"cores": 1, "network": {"ssh_port": 2244}}}})
    assert merged == {"l1": {"name": "a", "cores": 1, "network": {"ssh_port": 2244, "mode": "user"}}, "lab": True,
                      "host": {}}
    assert base["l1"]["cores"] == 2  # the base is not changed


def test_a_password_variable_is_refused_by_its_name_only():
    with pytest.raises(fleet.Refused) as e:
        fleet.host_params("h", {}, {"ansible_host": "h"}, ["ansible_password"])
    assert "ansible_password" in e.value.message and "key only" in e.value.message


def test_a_secret_in_nested_nvme_is_refused_and_not_written(tmp_path):
    base = lab_base(tmp_path)
    secret = "hunter2-do-not-print"
    with pytest.raises(fleet.Refused) as e:
        fleet.prepare(tmp_path / "f", "h", base, {"ansible_connection": "local",
                                                 "nested_nvme": {"l1": {"ssh": {"password": secret}}}})
    assert "l1.ssh.password" in e.value.message and secret not in str(e.value)
    assert not (tmp_path / "f" / "h" / "params.yaml").exists()
    rec = json.loads((tmp_path / "f" / "h" / "host.json").read_text())
    assert rec["status"] == "refused parameters" and secret not in json.dumps(rec)


def test_prepare_writes_the_merged_file_and_refuses_with_the_schemas_message(tmp_path):
    base = lab_base(tmp_path)
    rec = fleet.prepare(tmp_path / "f", "a", base, {"ansible_host": "127.0.0.1", "ansible_port": 2250,
                                                    "ansible_user": "root",
                                                    "nested_nvme": {"l1": {"name": "nested-kvm-fleet-b"}}})
    written = yaml.safe_load(Path(rec["params"]).read_text())
    assert written["l1"]["name"] == "nested-kvm-fleet-b"
    assert written["host"]["ssh"] == {"address": "127.0.0.1", "port": 2250, "user": "root"}
    assert rec["status"] == "prepared" and rec["l0"] == "root@127.0.0.1:2250"
    with pytest.raises(fleet.Refused) as e:
        fleet.prepare(tmp_path / "f", "b", base, {"ansible_connection": "local", "nested_nvme": {"l1": {"cores": 0}}})
    assert "params.yaml:" in e.value.message and "l1.cores" in e.value.message and "nested_nvme" in e.value.hint


def test_resume_stage_is_where_the_host_stopped(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"stages": [
        {"stage": "01", "status": "passed"}, {"stage": "02", "status": "passed"},
        {"stage": "03", "status": "interrupted"}]}))
    assert fleet.resume_stage(tmp_path, "02") == "03"
    assert fleet.resume_stage(tmp_path, "04") == "04"
    assert fleet.resume_stage(tmp_path / "none", "01") == "01"


# --- Ctrl-C on its way to a host's runner -------------------------------------------------------

COUNT_SIGINTS = """import signal, sys, time
n = 0
def got(*_):
    global n
    n += 1
    open(sys.argv[1], "w").write(str(n))
signal.signal(signal.SIGINT, got)
open(sys.argv[1], "w").write("0")
while True:
    time.sleep(0.05)
"""


def wait_for(pred, timeout=10.0):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_sigint_sigterm_and_sighup_reach_the_runner_as_one_ctrl_c_each(tmp_path):
    """What reaches the wrapper twice at once (the fleet's own SIGINT, then Ansible's SIGINT and
    SIGTERM to the worker's group) is one Ctrl-C for the runner; a second a second later is another."""
    import os
    import signal
    import time
    count = tmp_path / "count"
    child = subprocess.Popen([sys.executable, "-c", COUNT_SIGINTS, str(count)], start_new_session=True)
    try:
        assert wait_for(lambda: count.exists())
        with fleet.InterruptsPassedOn(child.pid):
            for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
                os.kill(os.getpid(), sig)
            assert wait_for(lambda: count.read_text() == "1")
            time.sleep(fleet.InterruptsPassedOn.ONCE + 0.1)
            os.kill(os.getpid(), signal.SIGHUP)
            assert wait_for(lambda: count.read_text() == "2")
        time.sleep(0.3)
        assert count.read_text() == "2" and child.poll() is None  # passed on as SIGINT: never a kill
    finally:
        child.kill()
        child.wait()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers given back


def test_interrupt_hosts_signals_each_running_hosts_wrapper_and_no_other(tmp_path):
    import os
    count = tmp_path / "count"
    child = subprocess.Popen([sys.executable, "-c", COUNT_SIGINTS, str(count)], start_new_session=True)
    try:
        assert wait_for(lambda: count.exists())
        d = tmp_path / "fleet-x"
        fake_host(d, "busy", {"status": "running", "pid": child.pid})
        fake_host(d, "done", {"status": "done", "pid": os.getpid(), "rc": 0})
        fake_host(d, "gone", {"status": "running", "pid": 2 ** 22 + 1})
        assert fleet.interrupt_hosts(d) == ["busy"]
        assert wait_for(lambda: count.read_text() == "1")
    finally:
        child.kill()
        child.wait()


def test_a_host_whose_wrapper_and_runner_were_killed_is_interrupted_not_failed(tmp_path):
    """Its record still says running, with no exit code: Ctrl-C or a kill stopped it."""
    d = tmp_path / "fleet-x"
    fake_host(d, "h", {"status": "running", "pid": 2 ** 22 + 1, "runner_pid": 2 ** 22 + 2, "rc": None},
              stages=[{"stage": "01", "status": "running"}])
    h = fleet.host_view(d, "h")
    assert h["status"] == "interrupted" and h["stopped_at"] == "01", h


def test_a_host_whose_runner_outlives_its_wrapper_is_still_running(tmp_path):
    import os
    d = tmp_path / "fleet-x"
    fake_host(d, "h", {"status": "running", "pid": 2 ** 22 + 1, "runner_pid": os.getpid(), "rc": None},
              stages=[{"stage": "01", "status": "running"}])
    assert fleet.host_view(d, "h")["status"] == "running"


# --- the index ----------------------------------------------------------------------------------

def fake_host(d: Path, host: str, rec: dict, stages: list[dict] | None = None, checks: list[dict] | None = None):
    hd = d / host
    hd.mkdir(parents=True)
    run = hd / host
    rec = {"host": host, "l0": f"root@{host}:22", "l1": "l1-" + host, **rec}
    if stages is not None:
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"stages": stages}))
        (run / "report.html").write_text("<html></html>")
        (run / "state.json").write_text(json.dumps({"host": {"checks": checks or []}}))
        rec["run_dir"] = str(run)
    (hd / "host.json").write_text(json.dumps(rec))


CHECKS_OK = [{"name": "KVM", "observed": "/dev/kvm", "verdict": "pass", "fix": ""}]
CHECKS_BAD = [{"name": "KVM", "observed": "no /dev/kvm", "verdict": "fail", "fix": "modprobe kvm_intel"}]


def test_index_says_each_hosts_status_with_error_hint_and_report(tmp_path):
    d = tmp_path / "fleet-x"
    (d).mkdir()
    (d / "fleet-meta.json").write_text(json.dumps({"fleet_id": "x", "inventory": "/inv.yml", "params": "/b.yaml",
                                                   "stages": "01,02,03", "mode": "run"}))
    fake_host(d, "ok", {"status": "done", "rc": 0, "seconds": 200.0},
              [{"stage": "01", "status": "passed", "seconds": 3.0}, {"stage": "02", "status": "passed", "seconds": 40}],
              CHECKS_OK)
    fake_host(d, "bad", {"status": "done", "rc": 1, "seconds": 90.0},
              [{"stage": "01", "status": "passed", "seconds": 3.0},
               {"stage": "02", "status": "failed", "error": "RunbookError: L1 did not boot", "hint": "read the console"}],
              CHECKS_BAD)
    fake_host(d, "stopped", {"status": "done", "rc": 130},
              [{"stage": "01", "status": "passed"},
               {"stage": "02", "status": "interrupted", "error": "interrupted (Ctrl-C / SIGINT) while the stage ran",
                "hint": "resume with `python -m helpers run ... --from 02`"}])
    fake_host(d, "gone", {"status": "unreachable", "error": "L0 cannot be reached over SSH: Connection refused",
                          "hint": "check ansible_port"})
    fake_host(d, "wrong", {"status": "refused parameters", "error": "host wrong: l1.cores: >= 1", "hint": "fix it"})
    fake_host(d, "never", {"status": "prepared"})
    view = fleet.write_index(d)
    by = {h["host"]: h for h in view["hosts"]}
    assert {h: v["status"] for h, v in by.items()} == {
        "ok": "passed", "bad": "failed", "stopped": "interrupted", "gone": "unreachable",
        "wrong": "refused parameters", "never": "not run"}
    assert by["bad"]["stopped_at"] == "02" and by["bad"]["hint"] == "read the console"
    assert not view["passed"] and view["counts"]["passed"] == 1
    assert view["resume"].endswith("--fleet-id x --from 02")
    page = (d / "index.html").read_text()
    assert "failed at stage 02" in page and "L1 did not boot" in page and "read the console" in page
    assert "interrupted at stage 02" in page and 'href="ok/ok/report.html"' in page
    assert "Readiness" in page and "modprobe kvm_intel" in page and "not ready" in page
    assert "Connection refused" in page and "refused parameters" in page
    assert json.loads((d / "fleet.json").read_text())["hosts"][0]["host"] == "bad"
    assert "True" not in page and "None" not in page and "{'" not in page


def test_check_mode_index_lists_each_hosts_planned_changes(tmp_path):
    d = tmp_path / "fleet-c"
    d.mkdir()
    (d / "fleet-meta.json").write_text(json.dumps({"mode": "check"}))
    fake_host(d, "a", {"status": "done", "rc": 0, "mode": "check"},
              [{"stage": "02", "status": "passed", "steps": [
                  {"step": "Define L1", "plan": "1 change: L0: define nested-kvm-a", "changes": 1},
                  {"step": "Wait", "plan": "no change", "changes": 0},
                  {"step": "Boot", "plan": "", "changes": 0, "unknown": "unknown until L1 runs"}]}])
    page = fleet.render_index(fleet.fleet_view(d), d)
    assert "Planned changes" in page and "define nested-kvm-a" in page and "unknown until L1 runs" in page
    assert "Wait" not in page


# --- the command --------------------------------------------------------------------------------

def run_fleet(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "helpers", "fleet", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_command_line_mistakes_are_refused_before_anything(tmp_path):
    r = run_fleet("--inventory", str(tmp_path / "missing.yml"), "--outputs", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    a:\n      ansible_connection: local\n")
    r = run_fleet("--inventory", str(inv), "--forks", "0", "--outputs", str(tmp_path / "o"))
    assert r.returncode == 2 and "--forks 0" in r.stderr
    r = run_fleet("--inventory", str(inv), "--from", "99", "--outputs", str(tmp_path / "o"))
    assert r.returncode == 2 and "--stages 99" in r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("fleet-*/*/host.json"))


def test_a_refused_host_and_an_unreachable_one_are_reported_while_the_others_run(tmp_path):
    """A real ansible-playbook run (check mode, so nothing changes and it is quick): one host
    on this machine, one whose merged parameters the schema refuses, one whose port is closed."""
    base = lab_base(tmp_path)
    (tmp_path / "inv" / "host_vars").mkdir(parents=True)
    inv = tmp_path / "inv" / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"lab": {"hosts": {
        "here": {"ansible_connection": "local"}, "refused": {"ansible_connection": "local"},
        "closed": {"ansible_host": "127.0.0.1", "ansible_port": CLOSED_PORT, "ansible_user": "root"}}}}}}))
    (tmp_path / "inv" / "host_vars" / "refused.yml").write_text("nested_nvme:\n  l1:\n    cores: 0\n")
    out = tmp_path / "outputs"
    r = run_fleet("--inventory", str(inv), "--params", str(base), "--check", "--outputs", str(out))
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-3000:]
    d = next(out.glob("fleet-*-check"))
    view = json.loads((d / "fleet.json").read_text())
    by = {h["host"]: h for h in view["hosts"]}
    assert by["here"]["status"] == "passed", by["here"]
    assert by["refused"]["status"] == "refused parameters" and "l1.cores" in by["refused"]["error"]
    assert by["closed"]["status"] == "unreachable" and "Connection refused" in by["closed"]["error"]
    assert [s["stage"] for s in by["here"]["stages"]] == ["01", "02", "03", "04", "05"]
    assert by["here"]["plans"], "check mode lists the planned changes of the host that ran"
    assert (Path(by["here"]["report"])).exists()
    assert not (d / "refused" / "refused").exists()  # nothing ran for the refused host
    page = (d / "index.html").read_text()
    assert "Planned changes" in page and "refused parameters" in page and "unreachable" in page
    assert "refused parameters" in r.stdout and "unreachable" in r.stdout
    assert "Traceback" not in r.stderr


def test_the_example_inventory_maps_and_passes_the_schema(tmp_path):
    """parameters/fleet-example, read by Ansible itself (ansible-inventory, no connection made),
    gives each host valid parameters over the seed's file."""
    inv = ROOT / "parameters" / "fleet-example" / "hosts.yml"
    r = subprocess.run([fleet_cmd.ansible_playbook().replace("ansible-playbook", "ansible-inventory"),
                        "-i", str(inv), "--list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    hostvars = listed.pop("_meta")["hostvars"]
    hosts = {h for group in listed.values() for h in group.get("hosts", [])}
    base = ROOT / "parameters" / "seed-xeon4214.yaml"
    recs = {h: fleet.prepare(tmp_path, h, base, hostvars.get(h, {})) for h in hosts}
    assert recs["server1"]["l0"] == "root@server1.example.com:22"
    assert recs["server2"]["l0"] == "server2 (ssh config)" and recs["localhost"]["l0"] == "this machine"
    s1 = yaml.safe_load((tmp_path / "server1" / "params.yaml").read_text())
    assert s1["host"]["ssh"]["known_hosts"] == str(Path("~/.ssh/known_hosts_rack1").expanduser())
    assert s1["l1"]["name"] == "nested-kvm-server1" and s1["l2"] == yaml.safe_load(base.read_text())["l2"]


def test_ctrl_c_stops_every_hosts_run_and_says_how_to_resume(tmp_path):
    """SIGINT to the fleet command reaches each host's runner, which stops its stage and
    records it; the fleet exits 130 and each host says how to resume (check mode: nothing changes).
    Its L1 name is its own: a runner this test failed to stop holds no lock the lab's fleet tests need."""
    import signal
    import time
    base = lab_base(tmp_path, "nested-kvm-fleet-ctrl-c")
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    here:\n      ansible_connection: local\n")
    out = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, "-m", "helpers", "fleet", "--inventory", str(inv), "--params", str(base),
                             "--check", "--outputs", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:  # until the host's runner is in a stage
            log = next(out.glob("fleet-*/here/runner.log"), None)
            if log and "== stage 0" in log.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the host's runner did not start a stage within 120 s")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout[-3000:] + stderr[-3000:]
    d = next(out.glob("fleet-*-check"))
    h = json.loads((d / "fleet.json").read_text())["hosts"][0]
    log = (d / "here" / "runner.log").read_text()
    assert h["status"] == "interrupted" and h["stopped_at"], (h, log[-3000:], stderr[-3000:])
    assert f"--from {h['stopped_at']}" in h["hint"] and "INTERRUPTED" in stderr
    assert "interrupted at stage" in (d / "index.html").read_text()
