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
