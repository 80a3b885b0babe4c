"""The fleet for real: an Ansible inventory of three hosts, two of them L0s reached
through sshds this test starts on 127.0.0.1 (ports 2250 and 2251, each with its own
host key and user key: ``start_sshd`` of the remote-L0 lab test), each L0 with its
own L1 (name, SSH port, workdir, one vCPU) in host_vars, and a third host whose
port (2252) is closed. Both L0s are this machine, reached over SSH.

- ``--stages 01``: the readiness matrix, the two reachable hosts ready, the third unreachable;
- stages 01-05 on the two reachable hosts at the same time (Ansible's free strategy):
  both pass, both reports linked from the index, and the fleet exits non-zero
  because of the unreachable host;
- ``--stages 99``: both L1s torn down.

With ``NESTED_NVME_FLEET_BENCH=1`` it also runs stages 01-05 on one host alone
(``--limit fleet-a``) and prints both wall times (for the README; off in CI).
"""
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_lab_remote import start_sshd

ROOT = Path(__file__).resolve().parent.parent
HOSTS = {"fleet-a": ("nested-kvm-fleet-a", 2244, "/var/lib/nested-nvme-fleet-a", 2250),
         "fleet-b": ("nested-kvm-fleet-b", 2245, "/var/lib/nested-nvme-fleet-b", 2251)}
CLOSED = ("fleet-closed", 2252)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]


def write_inventory(d: Path, keys: dict[str, Path]) -> Path:
    inv = d / "inventory"
    (inv / "host_vars").mkdir(parents=True)
    hosts = {h: {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
                 "ansible_ssh_private_key_file": str(keys[h] / "user"),
                 "ansible_ssh_common_args": f"-o UserKnownHostsFile={keys[h] / 'known_hosts'}"}
             for h, (_, _, _, port) in HOSTS.items()}
    hosts[CLOSED[0]] = {"ansible_host": "127.0.0.1", "ansible_port": CLOSED[1], "ansible_user": "root"}
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"l0s": {"hosts": hosts}}}}))
    for h, (name, l1_port, workdir, _) in HOSTS.items():
        (inv / "host_vars" / f"{h}.yml").write_text(yaml.safe_dump({"nested_nvme": {
            "host": {"workdir": workdir}, "nvme": {"backing_file": f"{workdir}/nvme.raw"},
            "l1": {"name": name, "cores": 1, "network": {"ssh_port": l1_port}}}}))
    return inv / "hosts.yml"


def fleet(inv: Path, outputs: Path, *args) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "helpers", "fleet", "--inventory", str(inv), "--outputs", str(outputs), *args]
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    took = time.monotonic() - t0
    print(r.stdout[-5000:], r.stderr[-3000:], f"({took:.0f} s)", flush=True)
    return r, took


def view(outputs: Path, fleet_id: str) -> dict:
    return json.loads((outputs / f"fleet-{fleet_id}" / "fleet.json").read_text())


def defined(name: str) -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "dominfo", name], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    d.chmod(0o700)
    keys, sshds = {}, []
    try:
        for h, (_, _, _, port) in HOSTS.items():
            keys[h] = d / h
            keys[h].mkdir(mode=0o700)
            sshds.append(start_sshd(keys[h], port))
        inv = write_inventory(d, keys)
        out = d / "outputs"
        both = ":".join(HOSTS)
        fleet(inv, out, "--limit", both, "--stages", "99", "--fleet-id", "pre-clean")
        ready = fleet(inv, out, "--stages", "01", "--fleet-id", "ready")
        full = fleet(inv, out, "--fleet-id", "full")
        full_view = view(out, "full")  # before the teardown below adds stage 99 to it
        down = fleet(inv, out, "--limit", both, "--stages", "99", "--fleet-id", "full")
        gone = {h: not defined(name) for h, (name, *_) in HOSTS.items()}
        alone = None
        if os.environ.get("NESTED_NVME_FLEET_BENCH") == "1":
            alone = fleet(inv, out, "--limit", "fleet-a", "--fleet-id", "alone")
            fleet(inv, out, "--limit", "fleet-a", "--stages", "99", "--fleet-id", "alone")
            print(f"FLEET BENCH: stages 01-05 on fleet-a and fleet-b at once {full[1]:.0f} s; "
                  f"on fleet-a alone {alone[1]:.0f} s", flush=True)
        yield {"d": d, "out": out, "inv": inv, "ready": ready, "full": full, "full_view": full_view, "down": down, "gone": gone,
               "alone": alone, "keys": keys}
    finally:
        for h, (name, *_) in HOSTS.items():
            if defined(name) and keys.get(h):
                fleet(d / "inventory" / "hosts.yml", d / "outputs", "--limit", h, "--stages", "99",
                      "--fleet-id", "final-clean")
        for s in sshds:
            s.terminate()
            s.wait(10)


def test_01_stage_01_gives_the_readiness_matrix(lab):
    r, _ = lab["ready"]
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # the closed port
    v = view(lab["out"], "ready")
    by = {h["host"]: h for h in v["hosts"]}
    assert by[CLOSED[0]]["status"] == "unreachable" and "Connection refused" in by[CLOSED[0]]["error"]
    for h in HOSTS:
        assert by[h]["status"] == "passed", by[h]
        assert by[h]["checks"] and not [c for c in by[h]["checks"] if c["verdict"] == "fail"]
    page = (lab["out"] / "fleet-ready" / "index.html").read_text()
    assert "Readiness" in page and page.count("<td class='pass'>ready</td>") == 2 and "unreachable" in page
    names = {c["name"] for c in by["fleet-a"]["checks"]}
    assert all(f"<th>{html.escape(n)}</th>" in page for n in names)


def test_02_stages_01_to_05_pass_on_both_hosts_at_once(lab):
    r, took = lab["full"]
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    v = lab["full_view"]
    by = {h["host"]: h for h in v["hosts"]}
    assert by[CLOSED[0]]["status"] == "unreachable"
    for h in HOSTS:
        assert by[h]["status"] == "passed", by[h]
        assert [s["stage"] for s in by[h]["stages"]] == ["01", "02", "03", "04", "05"]
        assert by[h]["results"] and "L2" in by[h]["results"][0]
    # at the same time: each host's run overlapped the other's
    spans = []
    for h in HOSTS:
        summary = json.loads((Path(by[h]["run_dir"]) / "summary.json").read_text())
        spans.append((summary["started"], summary["finished"]))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    page = (lab["out"] / "fleet-full" / "index.html").read_text()
    for h in HOSTS:
        assert f'href="{h}/{h}/report.html"' in page
        assert (lab["out"] / "fleet-full" / h / h / "report.html").exists()
    assert "python -m helpers compare" in page and v["compare"]


def test_03_the_fleets_results_compare(lab):
    v = lab["full_view"]
    runs = v["compare"].split("compare ", 1)[1].split()
    r = subprocess.run([sys.executable, "-m", "helpers", "compare", *runs, "--no-plot"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "fleet-a" in r.stdout and "fleet-b" in r.stdout


def test_04_teardown_on_both_hosts(lab):
    """--limit: only the two hosts; the exit code is theirs (the closed host's record stays)."""
    r, _ = lab["down"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert CLOSED[0] not in r.stdout
    assert all(lab["gone"].values()), lab["gone"]
    for _, (_, _, workdir, _) in HOSTS.items():
        left = os.listdir(workdir) if os.path.isdir(workdir) else []
        assert not {f for f in left if f.endswith((".qcow2", "-console.log"))}, left


def test_05_no_key_in_any_parameter_file_or_output(lab):
    """Only the key files' paths went into the hosts' parameters; no key material anywhere."""
    secrets = [(lab["keys"][h] / "user").read_text().strip().splitlines()[1] for h in HOSTS]
    for f in (lab["out"]).rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json", ".html", ".log", ".ipynb"):
            text = f.read_text(errors="replace")
            assert "PRIVATE KEY" not in text and not any(s in text for s in secrets), f
    merged = yaml.safe_load((lab["out"] / "fleet-full" / "fleet-a" / "params.yaml").read_text())
    assert merged["host"]["ssh"]["identity"] == str(lab["keys"]["fleet-a"] / "user")
