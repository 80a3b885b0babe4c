"""Stage 03's steps against a fake Debian L1 (a real shell on a fake root, tests/sandbox.py):
check mode plans the grub diff, the reboot and the install and changes nothing; a run applies
exactly the plan; a rerun plans no change."""
from pathlib import Path

import pytest
import yaml

from helpers import l0 as l0_mod
from helpers import nb
from helpers.stages import build_l1, configure_l1 as c3
from sandbox import Sandbox, needs_unshare

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).parent / "fixtures" / "boot"
CMDLINE = "BOOT_IMAGE=/vmlinuz-6.1.0-28-amd64 root=/dev/vda ro console=ttyS0\n"


@pytest.fixture
def stage(tmp_path, monkeypatch):
    data = yaml.safe_load((ROOT / "parameters" / "lab.yaml").read_text())
    data["host"]["workdir"] = str(tmp_path / "work")
    data["l1"]["iommu"] = "intel"   # the sandbox's /sys is this machine's: no L1 ACPI tables to read
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))

    class Up:  # L1 runs (what stage 02 leaves)
        def __init__(self, uri=None):
            pass

        def is_active(self, name):
            return True
    monkeypatch.setattr(l0_mod, "libvirt", lambda p: Up())
    box = Sandbox(tmp_path / "l1", {"/etc/os-release": (FIX / "os-release-debian12").read_text(),
                                    "/etc/default/grub": (FIX / "default-grub-debian12").read_text()},
                  tools=["update-grub", "apt-get"], cmdline=CMDLINE, name="l1")

    def make(mode):
        ctx = nb.stage("03", str(tmp_path / "p.yaml"), str(tmp_path / "state.json"), show_picture=False, mode=mode)
        ctx.l1 = lambda: box
        return ctx
    return make, box


@needs_unshare
def test_check_mode_plans_stage_03_and_changes_nothing(stage):
    make, box = stage
    ctx = make("check")
    runs = {r.step.label: r for r in (ctx.step(cls()) for cls in c3.STEPS)}
    plans = {label: r.plan for label, r in runs.items()}
    assert runs["L1's distribution and bootloader"].result["bootloader"] == "grub"   # it only read: it ran
    args = plans["Set kernel arguments"]
    assert args.changes and args.actions[0].machine == "L1"
    assert args.actions[0].commands[-1] == "update-grub"
    assert '+GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in args.actions[0].content
    assert plans["Reboot L1"].changes and "lacks intel_iommu=on iommu=pt" in plans["Reboot L1"].actions[0].what
    assert plans["L1's IOMMU after the reboot"].unknown.startswith("L1 is rebooted")
    install = plans["Install the virtualization stack"]
    assert install.actions[0].commands[0].startswith(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ")
    assert plans["Start libvirt in L1"].unknown.startswith("the packages are installed")
    assert plans["Stage 01's checks in L1"].unknown and plans["L2's accelerator"].unknown
    assert not any(r.applied for label, r in runs.items() if not r.step.reads_only)
    assert box.calls() == []   # no tool ran
    assert box.file("/etc/default/grub") == (FIX / "default-grub-debian12").read_text()
    with pytest.raises(Exception, match="only planned"):
        runs["Set kernel arguments"].result


@needs_unshare
def test_a_run_applies_exactly_the_plan_and_a_rerun_plans_no_change(stage):
    make, box = stage
    ctx = make("run")
    ctx.step(c3.Distro())
    done = ctx.step(c3.KernelArgs())
    assert done.applied and done.result[0].changed
    assert box.calls() == ["update-grub "]
    assert 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in box.file("/etc/default/grub")
    assert "intel_iommu=on iommu=pt" in box.file("/boot/grub/grub.cfg")
    installed = ctx.step(c3.InstallVirt())
    assert installed.applied and box.calls()[-1] == installed.plan.actions[0].commands[0].split(" ", 1)[1]
    assert ctx.state["changes"]["03"]["Set kernel arguments"][0]["changed"] is True
    again = make("run")
    again.step(c3.Distro())
    assert again.step(c3.KernelArgs()).plan.reason == "no change: /etc/default/grub has them"


@needs_unshare
def test_a_run_with_nothing_to_do_reboots_nothing_and_starts_nothing(tmp_path, monkeypatch, stage):
    """A rerun: the kernel runs with the arguments and libvirt answers: the plans say no change
    and applying them runs no tool (no reboot, no systemctl)."""
    make, _ = stage
    box = Sandbox(tmp_path / "l1-done", {"/etc/os-release": (FIX / "os-release-debian12").read_text(),
                                         "/etc/default/grub": (FIX / "default-grub-debian12").read_text()},
                  tools=["update-grub", "apt-get", "virsh", "systemctl", "reboot"],
                  cmdline=CMDLINE.strip() + " intel_iommu=on iommu=pt\n", name="l1")
    ctx = make("run")
    ctx.l1 = lambda: box
    ctx.step(c3.Distro())
    reboot = ctx.step(c3.Reboot())
    assert not reboot.plan.changes and reboot.plan.reason.startswith("no change: the running kernel has")
    assert reboot.applied and not reboot.result[0].changed
    libvirt = ctx.step(c3.StartLibvirt())
    assert libvirt.plan.reason == "no change: qemu:///system answers in L1 (virsh version)"
    assert not libvirt.result[0].changed
    assert box.calls() == ["virsh -c qemu:///system version"]   # read only: no reboot, no systemctl
