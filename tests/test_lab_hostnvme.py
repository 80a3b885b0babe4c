"""A host NVMe passed through for real: L0 is the Intel lab's own L1.

After stage 03 the lab's L1 is a real host for this path: KVM (SVM offered by TCG), a
Linux IOMMU with interrupt remapping (the Intel vIOMMU) and a PCIe NVMe (serial 1234) on
the nvme driver in its own IOMMU group. This module brings up a lab of its own through
stage 03 (L1 nested-kvm-hostnvme, SSH on 127.0.0.1:2232, /var/lib/nested-nvme-hostnvme;
no other lab test's L1 is reused, so the module neither waits on nor disturbs another
test's guests), then runs parameters/lab-host-nvme.yaml (host.ssh to that L1) for real:

- the safety cases first, each made for real on that L0 and each refused by stage 01
  before anything changes, the reason naming the thing: the namespace mounted, used as
  swap, under a device-mapper target, held open by a process, and a nvme.select.bdf that
  is not an NVMe (its virtio disk); after each nothing is defined and the drive is still
  on nvme;
- then stages 01, 02, 05 and 99: stage 01 passes with KVM and the IOMMU found on that L0
  (not skipped), the drive is on vfio-pci on that L0 while the guest runs, the guest sees
  controller 1b36:0010 with serial 1234 and mounts the XFS, and teardown gives the drive
  back to nvme on that L0.

nvme.target l2 with a host NVMe (three levels: TCG, KVM, KVM) is not run here: check mode
and tests/test_host_nvme.py render it (see the README).
"""
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from helpers import params as params_mod
from helpers.access import l1_guest

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = Path("/var/lib/nested-nvme-hostnvme")
LAB = WORKDIR / "lab-hostnvme.yaml"
HOSTNVME = ROOT / "parameters" / "lab-host-nvme.yaml"
BDF, SERIAL, CHAIN_L1 = "0000:00:10.0", "1234", "nvme-l1"

pytestmark = [pytest.mark.lab, pytest.mark.timeout(3600)]


def write_lab_params() -> Path:
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["l1"].update(name="nested-kvm-hostnvme", cores=1)
    data["l1"]["network"]["ssh_port"] = 2232
    data["host"]["workdir"] = str(WORKDIR)
    data["nvme"]["backing_file"] = str(WORKDIR / "nvme.raw")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    LAB.write_text(yaml.safe_dump(data))
    return LAB


def runner(outputs: Path, params: Path, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "helpers", "run", "--params", str(params), "--outputs", str(outputs), *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=3000)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The Intel lab of this module through stage 03; torn down at the end."""
    outputs = tmp_path_factory.mktemp("outputs")
    write_lab_params()
    runner(outputs, LAB, "--stages", "99", "--run-id", "pre-clean")
    r = runner(outputs, LAB, "--stages", "01,02,03", "--run-id", "lab")
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0, f"the Intel lab did not come up through stage 03:\n{r.stdout[-3000:]}"
    l0 = l1_guest(params_mod.load(LAB))  # the lab's L1, which is L0 for the host-NVMe chain
    yield {"outputs": outputs, "l0": l0}
    runner(outputs, HOSTNVME, "--stages", "99", "--run-id", "hostnvme-final-clean")
    t = runner(outputs, LAB, "--stages", "99", "--run-id", "final-clean")
    print(t.stdout[-2000:], t.stderr[-2000:])


def sh(l0, cmd: str, check: bool = True) -> str:
    r = l0.run(cmd, timeout=120)
    assert r.ok or not check, f"{cmd}: {r.err}"
    return r.out.strip()


def driver(l0) -> str:
    return sh(l0, f"basename $(readlink /sys/bus/pci/devices/{BDF}/driver) 2>/dev/null || echo none", check=False)


def chain_l1_defined(l0) -> bool:
    return l0.run(f"virsh -c qemu:///system dominfo {CHAIN_L1}", timeout=60).ok


def nvme_listed(l0) -> bool:
    devices = json.loads(sh(l0, "nvme list -o json", check=False) or "{}").get("Devices", [])
    return any(d.get("SerialNumber", "").strip() == SERIAL for d in devices)


# --- the hazards, each made for real on that L0 and undone ----------------------------------------

@contextmanager
def mounted(l0):
    sh(l0, "wipefs -a -q /dev/nvme0n1 && mkfs.xfs -q -f /dev/nvme0n1 && mkdir -p /mnt/hostnvme-hazard "
           "&& mount /dev/nvme0n1 /mnt/hostnvme-hazard")
    try:
        yield ["/mnt/hostnvme-hazard"]
    finally:
        sh(l0, "umount /mnt/hostnvme-hazard; rmdir /mnt/hostnvme-hazard", check=False)


@contextmanager
def swap(l0):
    sh(l0, "wipefs -a -q /dev/nvme0n1 && mkswap -q /dev/nvme0n1 >/dev/null && swapon /dev/nvme0n1")
    try:
        yield ["swap"]
    finally:
        sh(l0, "swapoff /dev/nvme0n1; wipefs -a -q /dev/nvme0n1", check=False)


@contextmanager
def device_mapper(l0):
    sh(l0, "dmsetup create hostnvme-hazard --table '0 2048 linear /dev/nvme0n1 0'")
    try:
        yield ["hostnvme-hazard"]
    finally:
        sh(l0, "dmsetup remove hostnvme-hazard", check=False)


@contextmanager
def held_open(l0):
    pid = sh(l0, "setsid sh -c 'exec sleep 900 3</dev/nvme0n1' </dev/null >/dev/null 2>&1 & echo $!")
    try:
        yield ["sleep", pid]
    finally:
        sh(l0, f"kill {pid}", check=False)


HAZARDS = {"mounted": mounted, "swap": swap, "device-mapper": device_mapper, "held open": held_open}


@pytest.mark.parametrize("hazard", list(HAZARDS))
def test_a_drive_l0_uses_is_refused_before_anything_changes(lab, hazard):
    l0 = lab["l0"]
    assert driver(l0) == "nvme" and not chain_l1_defined(l0)
    with HAZARDS[hazard](l0) as named:
        r = runner(lab["outputs"], HOSTNVME, "--stages", "01,02", "--run-id", f"refused-{hazard.replace(' ', '-')}")
        said = r.stdout + r.stderr
        print(said[-3000:])
        assert r.returncode != 0 and "FAILED at stage 01" in said
        assert "may not be given to L1" in said or "may not be passed through" in said or "0000:00:10.0" in said
        for thing in named:
            assert thing in said, f"the refusal does not name {thing!r}"
        assert not chain_l1_defined(l0) and driver(l0) == "nvme"  # nothing was defined, the drive stayed


def test_a_bdf_that_is_not_an_nvme_is_refused_naming_what_it_is(lab, tmp_path):
    l0 = lab["l0"]
    virtio = sh(l0, "lspci -Dn | awk '$2 == \"0100:\" {print $1; exit}'")
    assert virtio, "the lab's L1 has no virtio disk controller to select"
    data = yaml.safe_load(HOSTNVME.read_text())
    data["nvme"]["select"] = {"bdf": virtio}
    f = tmp_path / "by-bdf.yaml"
    f.write_text(yaml.safe_dump(data))
    r = runner(lab["outputs"], f, "--stages", "01,02", "--run-id", "refused-bdf")
    said = r.stdout + r.stderr
    assert r.returncode != 0 and "FAILED at stage 01" in said
    assert f"{virtio} is a" in said and "not an NVMe controller" in said
    assert not chain_l1_defined(l0) and driver(l0) == "nvme"


def test_the_drive_goes_to_the_guest_and_comes_back(lab):
    l0, outputs = lab["l0"], lab["outputs"]
    r = runner(outputs, HOSTNVME, "--stages", "01,02,05", "--run-id", "hostnvme")
    print(r.stdout[-5000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout[-3000:]
    # while the guest runs: the drive is on vfio-pci on that L0, gone from its nvme list
    assert driver(l0) == "vfio-pci" and not nvme_listed(l0)
    st = json.loads((outputs / "hostnvme" / "state.json").read_text())
    checks = {c["name"]: c["verdict"] for c in st["host"]["checks"]}
    assert st["host"]["accel"] == "kvm"
    kvm = [n for n in checks if "kvm" in n.lower()]
    iommu = [n for n in checks if "iommu" in n.lower() or "dmar" in n.lower()]
    assert kvm and iommu and all(checks[n] == "pass" for n in kvm + iommu), checks  # found, not skipped
    assert st["host_nvme"]["bdf"] == BDF and st["host_nvme"]["given_to_l1"]["driver"] == "vfio-pci"
    seen = st["l2_verify"]
    assert seen["controller"]["ids"] == "1b36:0010" and seen["nvme"]["serial"] == SERIAL
    assert seen["df"]["type"] == "xfs" and seen["mounted"]
    # fio on the drive in the guest that holds it, and the emulated-disk comparison it asked for said not made
    data = json.loads((outputs / "hostnvme" / "results.json").read_text())
    assert {(s["layer"], s["target_kind"]) for s in data["summary"]} >= {("L0", "namespace"), ("L1", "namespace")}
    skipped = {(x["layer"], x["target_kind"]): x["reason"] for x in data["not_measured"]}
    assert "nvme.target is l1" in skipped[("L1", "virtio-blk")]
    t = runner(outputs, HOSTNVME, "--stages", "99", "--run-id", "hostnvme")
    print(t.stdout[-3000:], t.stderr[-2000:])
    assert t.returncode == 0, t.stdout[-3000:]
    assert driver(l0) == "nvme" and nvme_listed(l0) and not chain_l1_defined(l0)
    back = json.loads((outputs / "hostnvme" / "state.json").read_text())["host_nvme"]["given_back"]
    assert back["driver"] == "nvme" and back["listed"]
