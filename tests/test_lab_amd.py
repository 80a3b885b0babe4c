"""The second lab profile, for real, end to end: L1 with QEMU's AMD vIOMMU (parameters/lab-amd.yaml).

Stages 01-05 once on a real libvirtd and real guests (L1 under TCG with amd-iommu and the
options L0's QEMU needs, L2 under KVM in L1 with the NVMe bound to vfio-pci, the namespace
verified, formatted, mounted and benchmarked in L2), then stage 99; the facts are asserted
from what the run recorded (state, executed notebooks, results) and from the live guests
before the teardown. Once, with no retry and no allowance for a failure.

L1's and L2's kernel logs are kept with the run (l1-dmesg.txt, l2-dmesg.txt). Its own L1
name, port and folder, so it runs next to the Intel lab (tests/test_lab.py) without touching it.
"""
import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import params as params_mod
from helpers.access import l1_guest
from helpers.state import State

from test_lab import ROOT, runner, virsh_l0

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]

LAB_AMD = ROOT / "parameters" / "lab-amd.yaml"
RUN_ID = "lab-amd-e2e"


def l0_qemu_version() -> tuple[int, int, int]:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    return tuple(int(x) for x in re.search(r"version (\d+)\.(\d+)\.(\d+)", out).groups())


@pytest.fixture(scope="module")
def amd(tmp_path_factory):
    """Stages 01-05 on lab-amd.yaml from nothing; what the live L1 and L2 show; then stage 99."""
    outputs = tmp_path_factory.mktemp("outputs-amd")
    runner(outputs, "--stages", "99", "--run-id", "pre-clean", params=LAB_AMD)
    r = runner(outputs, "--run-id", RUN_ID, params=LAB_AMD)
    run = outputs / RUN_ID
    print(r.stdout[-6000:], r.stderr[-3000:])
    p = params_mod.load(LAB_AMD)
    live = {"xml": virsh_l0("dumpxml", p.l1.name).stdout}
    st = State(run / "state.json")
    if p.l1.name in virsh_l0("list", "--name").stdout:  # whatever happened: the evidence, kept with the run
        l1 = l1_guest(p, st)
        live.update(dmesg=l1.run("dmesg", check=True).out, uname=l1.run("uname -r", check=True).out.strip(),
                    iommu_lspci=l1.run("lspci -nn -d 1022:1419", check=True).out,
                    nvme_list_l1=l1.run("nvme list -o json").out)
        (run / "l1-dmesg.txt").write_text(live["dmesg"])
        bdf = json.loads((run / "state.json").read_text()).get("nvme", {}).get("bdf_in_l1")
        if bdf:
            live["lspci_k"] = l1.run(["lspci", "-k", "-s", bdf], check=True).out
        if (st.get("l2") or {}).get("started_at"):  # L2 was started (stage 04)
            from helpers.access import l2_guest
            l2 = l2_guest(p, st, l1)
            live.update(l2_lspci=l2.run("lspci -nn", timeout=60).out, l2_dmesg=l2.run("dmesg", timeout=60).out,
                        l2_mount=l2.run(f"findmnt -n -o SOURCE,FSTYPE {p.verify.mount_point}", timeout=60).out)
            (run / "l2-dmesg.txt").write_text(live["l2_dmesg"])
            print("L2's kernel log, nvme lines:\n" + "\n".join(ln for ln in live["l2_dmesg"].splitlines()
                                                              if "nvme" in ln.lower()))
    t = runner(outputs, "--stages", "99", "--run-id", "final-clean", params=LAB_AMD)
    print(t.stdout[-2000:], t.stderr[-2000:])
    yield {"run": run, "result": r, "live": live, "teardown": t, "params": p}


def state(amd) -> dict:
    return json.loads((amd["run"] / "state.json").read_text())


def test_01_stages_01_to_05_pass(amd):
    r = amd["result"]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = json.loads((amd["run"] / "summary.json").read_text())
    assert [(s["stage"], s["status"]) for s in summary["stages"]] == [
        ("01", "passed"), ("02", "passed"), ("03", "passed"), ("04", "passed"), ("05", "passed")]


def test_01b_stage_01_names_the_running_qemus_amd_iommu_hazard(amd):
    """On this L0 (QEMU 10.0.2 from bookworm-backports) stage 01 names pt's hazard and pt=off."""
    v = l0_qemu_version()
    check = {c["name"]: c for c in state(amd)["host"]["checks"]}["AMD vIOMMU on this QEMU"]
    assert f"QEMU {'.'.join(map(str, v))}" in check["observed"]
    if (9, 2, 0) <= v < (10, 0, 3):
        assert check["verdict"] == "warn" and "untranslated DMA" in check["observed"]
        assert "the runbook sets pt=off" in check["fix"]
    assert check["verdict"] in ("warn", "pass")


def test_02_l1_was_built_with_the_amd_viommu_and_the_options_its_qemu_needs(amd):
    st = state(amd)
    assert st["l1"]["iommu_kind"] == "amd" and "l1.iommu: amd" in st["l1"]["iommu_reason"]
    opts = st["l1"]["iommu_options"]
    xml = amd["live"]["xml"]
    assert "<iommu model='intel'>" not in xml  # libvirt 11.3: no model='amd', so QEMU's device
    assert f"<qemu:arg value='{opts['device']}'/>" in xml and "driver='qemu'" in xml  # split irqchip
    v = l0_qemu_version()
    assert ("pt=off" in opts["options"]) == ((9, 2, 0) <= v < (10, 0, 3))
    assert "device-iotlb" not in opts["device"]
    assert re.search(r"nvme,drive=nvm,serial=1234,bus=pcie\.0,addr=", xml)  # bus 0
    assert "[1022:1419]" in amd["live"]["iommu_lspci"] and "00:01.0" in amd["live"]["iommu_lspci"]  # AMDVI-PCI
    nb = (amd["run"] / "02_build_l1.ipynb").read_text()
    assert opts["device"] in nb  # the plan showed it


def test_03_l1_kernel_shows_amd_vi_with_interrupt_remapping(amd):
    st = state(amd)
    assert st["l1"]["boot_kernel"] and amd["live"]["uname"] == st["l1"]["boot_kernel"]
    assert not amd["live"]["uname"].endswith("cloud-amd64")  # the cloud kernel has no AMD IOMMU driver
    iommu = st["l1"]["iommu"]
    assert iommu["kind"] == "amd" and iommu["groups"] > 0
    assert any("AMD-Vi" in ln for ln in iommu["enabled_lines"])
    assert iommu["irq_remap_lines"] == ["AMD-Vi: Interrupt remapping enabled"]
    dmesg = amd["live"]["dmesg"]
    assert "AMD-Vi: Interrupt remapping enabled" in dmesg and "DMAR" not in dmesg
    assert (amd["run"] / "l1-dmesg.txt").read_text() == dmesg
    nb = (amd["run"] / "03_configure_l1.ipynb").read_text()
    assert "AMD-Vi: Interrupt remapping enabled" in nb


def test_04_nvme_alone_in_its_group_and_bound_to_vfio_in_l1(amd):
    st = state(amd)
    bdf = st["nvme"]["bdf_in_l1"]
    assert list(st["nvme"]["group_members"]) == [bdf]
    assert "Kernel driver in use: vfio-pci" in amd["live"]["lspci_k"]
    assert "1234" not in amd["live"]["nvme_list_l1"]  # the disk is gone from L1
    assert st["l2"]["accel"] == "kvm"


def test_05_l2_sees_the_namespace_formats_mounts_it(amd):
    """L2's nvme driver brought the passed-through controller up: namespace, mkfs.xfs, mount, df."""
    assert "[1b36:0010]" in amd["live"]["l2_lspci"]
    v = state(amd)["l2_verify"]
    assert v["controller"]["ids"] == "1b36:0010"
    assert v["nvme"]["model"] == "QEMU NVMe Ctrl" and v["nvme"]["serial"] == "1234"
    assert v["nvme"]["size_bytes"] == 1024 ** 3
    assert v["df"]["type"] == "xfs" and v["df"]["mounted_on"] == "/data"
    assert amd["live"]["l2_mount"].split() == ["/dev/nvme0n1", "xfs"]
    l2_log = (amd["run"] / "l2-dmesg.txt").read_text()
    assert l2_log == amd["live"]["l2_dmesg"]
    assert not [ln for ln in l2_log.splitlines() if "nvme" in ln and "timeout" in ln]  # QID 0 timeout: no translation


def test_06_fio_ran_in_l2(amd):
    data = json.loads((amd["run"] / "results.json").read_text())
    rows = {(s["layer"], s["target_kind"]): s for s in data["summary"]}
    # the same job on the passed-through namespace in L2 and (bench.emulated) on L2's virtio-blk disk
    for kind in ("namespace", "virtio-blk"):
        assert rows[("L2", kind)]["profile"] == "randread-4k" and rows[("L2", kind)]["iops_mean"] > 0, kind


def test_07_teardown_gives_it_back(amd):
    t, p = amd["teardown"], amd["params"]
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]
    assert virsh_l0("dominfo", p.l1.name).returncode != 0
    assert not p.nvme.backing_file.exists()
    assert not (Path(p.host.workdir) / f"{p.l1.name}.qcow2").exists()
    assert p.l1.name not in virsh_l0("list", "--all", "--name").stdout
