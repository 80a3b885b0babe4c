"""A host NVMe (nvme.source host): the parameters' rules, L1's definition with the controller
as a managed hostdev on a root port of its own (validated by libvirt's schema), the vIOMMU's
caching mode for target l2, libvirt's locked-memory rule, and stages 03/04 with target l1
saying so and applying nothing. The real run is tests/test_lab_hostnvme.py."""
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from helpers import nb, params
from helpers.libvirt_xml import IOMMU, VCPU, Domain, Features, HostdevOnRootPort, virt_install_command
from helpers.ops import l1 as l1_ops
from helpers.steps import Plan, Step

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = shutil.which("virt-xml-validate")


def load(tmp_path, text: str):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(text))
    return params.load(f)


def refused(tmp_path, text: str) -> str:
    with pytest.raises(params.ParamsError) as e:
        load(tmp_path, text)
    return str(e.value)


# --- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lab-host-nvme.yaml", "real-host-nvme.yaml"])
def test_shipped_host_nvme_files_load(name):
    p = params.load(ROOT / "parameters" / name)
    assert p.nvme.host and (p.nvme.select.serial or p.nvme.select.bdf)


def test_lab_host_nvme_is_the_intel_labs_l1_over_ssh():
    p = params.load(ROOT / "parameters" / "lab-host-nvme.yaml")
    assert (p.host.ssh.address, p.host.ssh.port) == ("127.0.0.1", 2232)
    assert p.nvme.select.serial == "1234" and p.nvme.target == "l1" and p.l1.lab_l2
    assert p.host.require_iommu and p.host.accel == "kvm"


def test_emulated_with_target_l1_is_refused_on_its_line(tmp_path):
    err = refused(tmp_path, """\
        name: x
        nvme:
          target: l1
        """)
    assert err.startswith(f"{tmp_path / 'p.yaml'}:3: nvme.target: `l1` with source `emulated` passes nothing through")


@pytest.mark.parametrize("key,value", [("backing_file", "/srv/n.raw"), ("size_gib", "2"), ("serial", '"9"'),
                                       ("pci_addr", '"0x11"'), ("remove_backing_file", "true")])
def test_the_emulated_drives_keys_are_refused_with_source_host(tmp_path, key, value):
    err = refused(tmp_path, f"""\
        name: x
        nvme:
          source: host
          select:
            serial: S1
          {key}: {value}
        """)
    assert f"p.yaml:6: nvme.{key}: only the emulated drive (source `emulated`) uses it" in err


@pytest.mark.parametrize("select", ["", "  select:\n    model: Samsung\n"])
def test_source_host_must_name_the_device(tmp_path, select):
    err = refused(tmp_path, "name: x\nnvme:\n  source: host\n" + select)
    assert "nvme.select: with source `host` name the controller by serial or bdf" in err
    assert "never taken by default" in err


def test_select_and_baseline_consent_are_for_source_host(tmp_path):
    err = refused(tmp_path, "name: x\nnvme:\n  select:\n    serial: S1\n")
    assert "p.yaml:4: nvme.select.serial: selects a controller of L0, which only source `host` uses" in err
    err = refused(tmp_path, "name: x\nnvme:\n  baseline_consent: true\n")
    assert "nvme.baseline_consent: is for a controller of L0" in err


def test_amd_viommu_with_a_host_device_is_judged_on_l0s_qemu_not_refused_by_the_file(tmp_path):
    """Whether amd-iommu can pass L0's controller on to L2 depends on L0's QEMU (dma-remap,
    10.2): the parameter file alone does not refuse it; stage 01 judges it (tests/test_amd_iommu.py)."""
    p = load(tmp_path, "name: x\nlab: true\nl1:\n  iommu: amd\nnvme:\n  source: host\n  select:\n    bdf: 0000:5e:00.0\n")
    assert p.l1.iommu == "amd" and p.nvme.in_l2
    p = load(tmp_path, "name: x\nlab: true\nl1:\n  iommu: amd\nnvme:\n  source: host\n  target: l1\n  select:\n"
                       "    bdf: 0000:5E:00.0\n")
    assert p.nvme.select.bdf == "0000:5e:00.0"


def test_lab_l2_image_only_for_the_host_nvme_lab(tmp_path):
    err = refused(tmp_path, "name: x\nlab: true\nl1:\n  image: lab-l2\n")
    assert "l1.image: `lab-l2` (the lab's L2 image in the lab's L1, which acts as L0) is for a host NVMe" in err


# --- L1's definition ------------------------------------------------------------------------------

def host_params(tmp_path, target: str, iommu: str = "auto"):
    data = yaml.safe_load((ROOT / "parameters" / "real-host-nvme.yaml").read_text())
    data["nvme"]["target"] = target
    data["l1"]["iommu"] = iommu
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    return params.load(f)


def l1_for(p, kind="intel"):
    return l1_ops.l1_domain(p, "kvm", "0-15", Path("/kvm/nested/img.qcow2"), Path("/kvm/nested/c.log"),
                            native_nvme=False, iommu=kind, host_nvme_bdf="0000:5e:00.0")


def test_target_l1_gets_the_hostdev_on_its_own_port_and_no_viommu(tmp_path):
    dom = l1_for(host_params(tmp_path, "l1"))
    xml = dom.to_xml()
    assert "<iommu" not in xml and "nvme,drive" not in xml  # no vIOMMU, no emulated NVMe
    assert '<controller type="pci" index="1" model="pcie-root-port" />' in xml
    assert '<hostdev mode="subsystem" type="pci" managed="yes">' in xml
    assert '<address domain="0x0000" bus="0x5e" slot="0x00" function="0x0" />' in xml
    assert '<address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0" />' in xml


def test_target_l2_keeps_the_viommu_with_caching_mode(tmp_path):
    xml = l1_for(host_params(tmp_path, "l2")).to_xml()
    assert '<driver intremap="on" caching_mode="on" iotlb="on" />' in xml and "<hostdev" in xml


def test_a_hostdev_behind_a_viommu_without_caching_mode_is_refused_as_qemu_would():
    dom = Domain(name="x", type="kvm", memory_mib=1024, vcpu=VCPU(2), features=Features(ioapic_driver="qemu"),
                 devices=[IOMMU(caching_mode=False), HostdevOnRootPort("0000:5e:00.0", port_index=1)])
    with pytest.raises(ValueError, match="needs caching_mode='on': QEMU refuses it otherwise"):
        dom.to_xml()
    dom.devices[0] = IOMMU(model="amd", caching_mode=None)
    with pytest.raises(ValueError, match="cannot sit behind the amd vIOMMU"):
        dom.to_xml()


@pytest.mark.parametrize("bdf,index", [("5e:00.0", 1), ("0000:5e:00.0", 0), ("0000:5e:00.0", 256)])
def test_hostdev_on_root_port_refuses_bad_fields(bdf, index):
    with pytest.raises(ValueError):
        HostdevOnRootPort(bdf, port_index=index)


@pytest.mark.skipif(VALIDATOR is None, reason="virt-xml-validate not installed (Debian package libvirt-clients)")
@pytest.mark.parametrize("target", ["l1", "l2"])
def test_libvirts_schema_accepts_l1_with_a_host_nvme(tmp_path, target):
    f = tmp_path / f"l1-{target}.xml"
    f.write_text(l1_for(host_params(tmp_path, target)).to_xml())
    r = subprocess.run([VALIDATOR, str(f), "domain"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_virt_install_equivalent_places_the_hostdev_on_its_port(tmp_path):
    cmd = virt_install_command(l1_for(host_params(tmp_path, "l1")))
    assert "--controller type=pci,model=pcie-root-port,index=1" in cmd
    assert "--hostdev 0000:5e:00.0,address.type=pci,address.bus=0x01,address.slot=0x00" in cmd


def test_locked_memory_follows_libvirts_rule():
    assert l1_ops.memlock_mib(32768, 0, viommu=True) == 0          # no hostdev: nothing locked for VFIO
    assert l1_ops.memlock_mib(32768, 1, viommu=False) == 33792     # memory + 1 GiB
    assert l1_ops.memlock_mib(512, 2, viommu=True) == 2 * 512 + 1024  # once per device behind a vIOMMU
    assert l1_ops.memlock_mib(512, 2, viommu=False) == 512 + 1024


def test_by_hand_commands_are_detach_attach_reattach(tmp_path):
    from helpers.stages import host_nvme
    cmds = host_nvme.by_hand_commands(host_params(tmp_path, "l1"), "0000:5e:00.0", "hostdev.xml")
    assert [c.split("   #")[0] for c in cmds[1:]] == [
        "virsh nodedev-detach pci_0000_5e_00_0", "virsh attach-device nested-kvm hostdev.xml --config",
        "virsh nodedev-reattach pci_0000_5e_00_0"]


# --- stages 03 and 04 with target l1 ------------------------------------------------------------

class Changer(Step):
    label = "Would change"

    def __init__(self):
        self.applied = False

    def plan(self, ctx):
        return Plan(self.label, [])

    def apply(self, ctx, plan):
        self.applied = True


@pytest.mark.parametrize("number", ["03", "04"])
def test_target_l1_stages_03_04_say_so_in_one_line_and_apply_nothing(tmp_path, capsys, number):
    from helpers.stages.host_nvme import NothingForTarget
    f = tmp_path / "p.yaml"
    f.write_text((ROOT / "parameters" / "lab-host-nvme.yaml").read_text())
    ctx = nb.stage(number, str(f), str(tmp_path / "state.json"), show_picture=False)
    run = ctx.step(NothingForTarget())
    assert run.result.startswith(f"nvme.target is l1: nothing to do in stage {number} for this target")
    step = Changer()
    other = ctx.step(step)
    assert not step.applied and other.plan.reason.startswith("no change: nvme.target is l1")
    out = capsys.readouterr().out
    assert out.count("nothing to do in stage") == 1 and "the run goes on" in out


def test_l0_baseline_reads_without_consent_and_writes_only_with_it(tmp_path):
    from helpers.stages.host_nvme import baseline_profiles
    p = host_params(tmp_path, "l1")
    p.bench.profiles = ["randread-4k", "randwrite-4k", "seqread-128k", "seqwrite-128k"]
    assert baseline_profiles(p) == (["randread-4k", "seqread-128k"], ["randwrite-4k", "seqwrite-128k"])
    p.nvme.baseline_consent = True
    assert baseline_profiles(p) == (p.bench.profiles, [])


# --- stage 02 with a host NVMe, against fakes of libvirt and of L0's controller -------------------

class FakeLibvirt:
    where = "fake:///"

    def lib_version(self):
        return 9_000_000

    def inactive_xml(self, name):
        return None

    def is_active(self, name):
        return False


class FakeDesc:
    """What checks.passthrough.prove_free describes (issue 23a's DeviceDescription), reduced."""

    class pci:
        numa_node, iommu_group, driver = None, 6, "nvme"

    bdf, serial, model, disks = "0000:5e:00.0", "S4EVNF0M123456", "Samsung SSD", ["nvme0n1"]

    def rows(self):
        return [("BDF", self.bdf), ("serial", self.serial)]


def fake_checks(verdict="pass"):
    from helpers.checks import Check, passthrough

    class Fake:
        select_host_nvme = staticmethod(lambda guest, select, role="l0": FakeDesc())
        prove_free = staticmethod(lambda guest, bdf, role, l1_cpus=None: (FakeDesc(), [
            Check("not mounted", "nvme0n1 on /srv (xfs)" if verdict == "fail" else "no filesystem mounted",
                  verdict, "umount /srv on L0" if verdict == "fail" else "")]))
        refuse_unless_free = staticmethod(passthrough.refuse_unless_free)
    return Fake


def stage_02(tmp_path, monkeypatch, mode, verdict="pass"):
    from helpers import l0 as l0_mod
    from helpers.facts import cpu as cpu_facts
    from helpers.stages import host_nvme
    data = yaml.safe_load((ROOT / "parameters" / "real-host-nvme.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["l1"]["image"] = str(tmp_path / "img.qcow2")
    data["bench"]["profiles"] = ["randread-4k", "randwrite-4k"]
    (tmp_path / "img.qcow2").write_text("")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(l0_mod, "libvirt", lambda p: FakeLibvirt())
    monkeypatch.setattr(host_nvme, "_checks", lambda: fake_checks(verdict))
    monkeypatch.setattr(cpu_facts, "topology", lambda g: type("T", (), {"nodes": {0: list(range(16))},
                                                                      "siblings": {}})())
    ctx = nb.stage("02", str(f), str(tmp_path / "state.json"), show_picture=False, mode=mode)
    ctx.state.set("accel", "kvm")
    return ctx


def test_check_mode_plans_stage_02_for_a_host_nvme_target_l2(tmp_path, monkeypatch):
    from helpers.stages import build_l1, host_nvme
    ctx = stage_02(tmp_path, monkeypatch, "check")
    host_nvme.prove(ctx, "stage 01")  # what stage 01 records
    runs = {r.step.label: r for r in (ctx.step(s()) for s in build_l1.STEPS)}
    d = runs["L1's definition"].result
    assert d.host_nvme_bdf == "0000:5e:00.0" and d.viommu and d.memlock_mib == 32768 + 1024
    assert 'caching_mode="on"' in d.xml and '<hostdev mode="subsystem" type="pci" managed="yes">' in d.xml
    assert [c.split("   #")[0] for c in d.by_hand][1:] == ["virsh nodedev-detach pci_0000_5e_00_0",
                                                         "virsh attach-device nested-kvm hostdev.xml --config",
                                                         "virsh nodedev-reattach pci_0000_5e_00_0"]
    define = runs["Define L1"].plan.actions[0]
    assert "<hostdev" in define.content  # the XML the plan shows is the one apply defines
    baseline = runs["Measure the drive on L0 before it goes"].plan.actions[0]
    assert "reads only" in baseline.what and "left out without nvme.baseline_consent: randwrite-4k" in baseline.what
    assert "--rw=randwrite" not in " ".join(baseline.commands)
    assert "libvirt moves L0's NVMe 0000:5e:00.0 from the nvme driver to vfio-pci" in \
        runs["Start L1"].plan.actions[0].what
    assert runs["L0 gave the NVMe to L1"].plan.unknown  # until L1 runs
    assert not runs["Start L1"].applied and not (tmp_path / "work").exists()


def test_a_controller_in_use_is_refused_right_before_l1_starts(tmp_path, monkeypatch):
    from helpers.errors import RunbookError
    from helpers.stages import host_nvme
    ctx = stage_02(tmp_path, monkeypatch, "run", verdict="fail")
    ctx.state.set(host_nvme.STATE_KEY, {"bdf": "0000:5e:00.0"})
    with pytest.raises(RunbookError) as e:
        ctx.step(host_nvme.ProveFreeAgain())
    assert "nvme0n1 on /srv (xfs)" in e.value.message and "nothing was defined or changed" in e.value.message
    assert e.value.hint == "umount /srv on L0"


def test_teardown_with_a_fresh_run_state_has_nothing_to_give_back(tmp_path, monkeypatch, capsys):
    from helpers.stages import host_nvme
    ctx = stage_02(tmp_path, monkeypatch, "run")
    ctx.number = "99"
    assert ctx.step(host_nvme.GivenBack()).result is None
    assert "nothing to give back" in capsys.readouterr().out
