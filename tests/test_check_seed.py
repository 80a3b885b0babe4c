"""Check mode with the seed's own parameters on this machine: the host checks fail here
(no VT-x, no bridge, no image), yet the run goes on and renders L1's full definition and
the virt-install command, and changes nothing."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def test_check_mode_with_the_seeds_parameters_renders_l1_and_changes_nothing(tmp_path):
    out = tmp_path / "outputs"
    r = subprocess.run([sys.executable, "-m", "helpers", "run", "--params", "parameters/seed-xeon4214.yaml",
                        "--check", "--stages", "01,02", "--outputs", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "a run would be refused on this host" in r.stdout and "bridge0" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    run = next(out.glob("*-check"))
    steps = {s["step"]: s for s in json.loads((run / "state.json").read_text())["steps"]["02"]}
    # the missing image stops a run: planned as unknown until that is fixed, and the check goes on
    assert "img-nested.qcow2 does not exist" in steps["Lab images"]["unknown"]
    define = steps["Define L1"]
    assert not define.get("applied") and len(define["actions"]) == 1
    nb = nbformat.read(run / "02_build_l1.ipynb", as_version=4)
    shown = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
    xml = shown.replace('\\"', '"')
    for part in ("<type arch=\"x86_64\" machine=\"q35\">", "<iommu model=\"intel\">", "intremap=\"on\"",
                 "<ioapic driver=\"qemu\"", "cpuset=\"16-23,40-47\"", "mode=\"host-passthrough\"", "nvme"):
        assert part in xml, part
    assert "virt-install" in shown and "--machine q35" in shown
    assert not Path("/kvm").exists()  # the seed's folders were not made


def test_check_mode_does_not_wait_for_a_running_domain_of_another_definition(tmp_path):
    """A running domain with L1's name but not L1's definition: check mode says 'Define L1' would
    stop the run, and waits for nothing (no SSH to the seed's L1 address, no guest agent wait)."""
    import re
    import libvirt
    name = "nested-nvme-seedcheck"
    params = tmp_path / "seed.yaml"
    params.write_text(re.sub(r"(?m)^(  name: )nested-kvm\b", rf"\g<1>{name}",
                             (ROOT / "parameters/seed-xeon4214.yaml").read_text(), count=1))
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
                         "<os><type arch='x86_64'>hvm</type></os><devices/></domain>")
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)  # active, and costs nothing
        r = subprocess.run([sys.executable, "-m", "helpers", "run", "--params", str(params), "--check",
                            "--stages", "01,02", "--outputs", str(tmp_path / "out"), "-q"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = next((tmp_path / "out").glob("*-check"))
    steps = {s["step"]: s for s in json.loads((run / "state.json").read_text())["steps"]["02"]}
    assert "exists with a different definition" in steps["Define L1"]["unknown"]
    for later in ("Wait for L1", "Look inside L1"):
        assert steps[later]["unknown"] == f"L1 ({name}) runs with the definition of step 'Define L1'", later
        assert not steps[later].get("applied"), later
