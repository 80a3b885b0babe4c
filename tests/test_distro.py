"""Distribution classes (helpers.distro): kernel arguments and packages, planned then applied,
through real shells on fake roots (a private mount namespace over /etc and /boot)."""
import shutil
from pathlib import Path

import pytest

from helpers.errors import RunbookError
from helpers import distro as ka
from helpers.guest import Local

FIX = Path(__file__).parent / "fixtures" / "boot"


def test_iommu_args():
    assert ka.iommu_args("intel", False) == ["intel_iommu=on"]
    assert ka.iommu_args("amd", True) == ["iommu=pt"] and ka.iommu_args("amd", False) == []
    assert ka.iommu_args("amd", True, tcg=True) == ["iommu=pt", "no_timer_check"]  # amd-iommu under TCG
    assert ka.iommu_args("intel", True, tcg=True) == ["intel_iommu=on", "iommu=pt"]


def test_debian_default_grub_gets_the_arguments_once():
    text = (FIX / "default-grub-debian12").read_text()
    new, added = ka.edit_default_grub(text, ["intel_iommu=on", "iommu=pt"])
    assert added == ["intel_iommu=on", "iommu=pt"]
    assert 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in new
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in new and "GRUB_TIMEOUT=5" in new
    again, added2 = ka.edit_default_grub(new, ["intel_iommu=on", "iommu=pt"])
    assert again == new and added2 == []


def test_centos_default_grub_keeps_its_arguments():
    text = (FIX / "default-grub-centos7").read_text()
    new, added = ka.edit_default_grub(text, ["intel_iommu=on"])
    assert 'GRUB_CMDLINE_LINUX="crashkernel=auto rd.lvm.lv=centos/root rd.lvm.lv=centos/swap rhgb quiet intel_iommu=on"' in new


def test_an_opposite_value_is_replaced():
    new, added = ka.edit_default_grub('GRUB_CMDLINE_LINUX="intel_iommu=off quiet"\n', ["intel_iommu=on"])
    assert added == ["intel_iommu=on"] and 'GRUB_CMDLINE_LINUX="quiet intel_iommu=on"' in new


def test_an_argument_in_the_default_line_counts():
    _, added = ka.edit_default_grub('GRUB_CMDLINE_LINUX_DEFAULT="quiet intel_iommu=on"\nGRUB_CMDLINE_LINUX=""\n',
                                    ["intel_iommu=on"])
    assert added == []


def test_grubby_info_is_parsed_per_kernel():
    args = ka.grubby_args((FIX / "grubby-info-centos7").read_text())
    assert len(args) == 2
    assert "intel_iommu=on" not in args["/boot/vmlinuz-3.10.0-1160.el7.x86_64"]


# --- real shells on fake roots (tests/sandbox.py) ---------------------------------------------

from sandbox import Sandbox, needs_unshare  # noqa: E402


@needs_unshare
def test_rhel_family_plans_grubby_like_the_seed_and_applies_exactly_that(tmp_path):
    box = Sandbox(tmp_path, {"/etc/os-release": (FIX / "os-release-centos7").read_text(),
                             "/var/lib/grubby-info": (FIX / "grubby-info-centos7").read_text()}, tools=["grubby"])
    boot = ka.bootloader(box)
    assert isinstance(boot, ka.Grubby)
    plan = boot.plan(box, ["intel_iommu=on"])
    assert plan.commands() == ["grubby --update-kernel ALL --args intel_iommu=on"]
    assert "vmlinuz-3.10.0-1160.el7.x86_64" in plan.edits[0].what   # the one entry that lacks it
    assert box.calls() == ["grubby --info=ALL"]                      # planning only read
    ch = boot.apply(box, plan)
    assert ch.changed and box.calls()[-1] == "grubby --update-kernel ALL --args intel_iommu=on"
    assert all("intel_iommu=on" in a for a in ka.grubby_args(box.file("/var/lib/grubby-info")).values())
    again = boot.plan(box, ["intel_iommu=on"])
    assert not again.changes and "every kernel entry" in again.reason
    assert not boot.apply(box, again).changed


@needs_unshare
def test_debian_family_plans_the_default_grub_diff_then_update_grub(tmp_path):
    box = Sandbox(tmp_path, {"/etc/default/grub": (FIX / "default-grub-debian12").read_text()},
                  tools=["update-grub"])
    boot = ka.bootloader(box)
    assert isinstance(boot, ka.DefaultGrub) and boot.mkconfig == "update-grub"
    plan = boot.plan(box, ["intel_iommu=on", "iommu=pt"])
    cmds = plan.commands()
    assert cmds[0] == "cp /etc/default/grub /etc/default/grub.before-runbook" and cmds[-1] == "update-grub"
    # one line edited (never the whole file written: the command is safe to paste on any server)
    assert cmds[1] == """sed -i 's|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"|' /etc/default/grub"""
    assert '-GRUB_CMDLINE_LINUX=""\n+GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in plan.edits[0].content
    assert box.calls() == [] and "intel_iommu" not in box.file("/etc/default/grub")   # plan changed nothing
    assert boot.apply(box, plan).changed
    assert box.calls() == ["update-grub "]
    assert 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in box.file("/etc/default/grub")
    assert box.file("/etc/default/grub.before-runbook") == (FIX / "default-grub-debian12").read_text()
    assert "intel_iommu=on iommu=pt" in box.file("/boot/grub/grub.cfg")
    # the commands the plan shows, typed into a shell, make the same file
    typed = Sandbox(tmp_path / "typed", {"/etc/default/grub": (FIX / "default-grub-debian12").read_text()},
                    tools=["update-grub"])
    for c in cmds:
        assert typed.run(c).ok, c
    assert typed.file("/etc/default/grub") == box.file("/etc/default/grub")
    again = boot.plan(box, ["intel_iommu=on", "iommu=pt"])
    assert not again.changes and again.reason == "/etc/default/grub has them"


@needs_unshare
def test_grub2_mkconfig_where_there_is_no_update_grub(tmp_path):
    box = Sandbox(tmp_path, {"/etc/default/grub": (FIX / "default-grub-centos7").read_text()},
                  tools=["grub2-mkconfig"])
    boot = ka.bootloader(box)
    plan = boot.plan(box, ["intel_iommu=on"])
    assert plan.commands()[-1] == "grub2-mkconfig -o /boot/grub2/grub.cfg"
    boot.apply(box, plan)
    assert box.calls() == ["grub2-mkconfig -o /boot/grub2/grub.cfg"]
    assert "rhgb quiet intel_iommu=on" in box.file("/boot/grub2/grub.cfg")


@needs_unshare
def test_kernel_install_systems(tmp_path):
    box = Sandbox(tmp_path, {"/etc/kernel/cmdline": "root=UUID=abc ro\n"}, tools=["kernel-install"])
    boot = ka.bootloader(box)
    assert isinstance(boot, ka.KernelInstall)
    plan = boot.plan(box, ["amd_iommu=on"])
    assert plan.commands()[-1] == ka.boot.KERNEL_INSTALL
    assert boot.apply(box, plan).changed
    assert box.file("/etc/kernel/cmdline") == "root=UUID=abc ro amd_iommu=on\n"
    assert box.calls()[0].startswith("kernel-install add ")
    assert box.file("/boot/loader/entry.conf") == "options root=UUID=abc ro amd_iommu=on\n"
    assert not boot.plan(box, ["amd_iommu=on"]).changes


@needs_unshare
def test_no_bootloader_tool_is_a_clear_error(tmp_path):
    with pytest.raises(RunbookError, match="no grubby, /etc/default/grub or kernel-install"):
        ka.bootloader(Sandbox(tmp_path, {}))


@needs_unshare
@pytest.mark.parametrize("tool, cls, command", [
    ("apt-get", ka.Apt, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                        "libvirt-daemon-system no-such-package-xyz"),
    ("yum", ka.Yum, "yum install -y -q libvirt-daemon-system no-such-package-xyz"),
])
def test_packages_plan_installs_only_what_is_missing(tmp_path, tool, cls, command):
    box = Sandbox(tmp_path, {}, tools=[tool])
    pm = ka.package_manager(box)
    assert type(pm) is cls
    pm.missing = lambda guest, pkgs: [p for p in pkgs if p != "dpkg"]  # what the host's dpkg/rpm would say
    plan = pm.plan(box, ["dpkg", "libvirt-daemon-system", "no-such-package-xyz"])
    assert plan.commands() == [command] and "found installed: dpkg" in plan.edits[0].what
    assert box.calls() == []
    assert pm.apply(box, plan).changed and box.calls() == [command.split(" ", 1)[-1] if tool == "apt-get"
                                                           else command]


def test_apt_asks_dpkg_once_and_names_the_missing():
    class Counting(Local):
        calls = 0

        def _run(self, cmd, timeout, input):
            Counting.calls += 1
            return super()._run(cmd, timeout, input)

    if not shutil.which("dpkg-query"):
        pytest.skip("no dpkg-query on this machine (not Debian)")
    g = Counting()
    assert ka.Apt().missing(g, ["dpkg", "no-such-package-xyz", "coreutils"]) == ["no-such-package-xyz"]
    assert Counting.calls == 1
    plan = ka.Apt().plan(g, ["dpkg"])
    assert not plan.changes and plan.reason == "found installed: dpkg"


def test_fix_texts_come_from_the_classes():
    from helpers.facts.system import OSRelease
    centos = OSRelease(id="centos", id_like="rhel fedora")
    debian = OSRelease(id="debian")
    assert ka.boot_fix(centos, "intel_iommu=on", "in L1") == \
        "in L1: grubby --update-kernel ALL --args 'intel_iommu=on', then reboot"
    assert "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub" in ka.boot_fix(debian, "x=1", "on the host")
    assert "bootloader's configuration" in ka.boot_fix(OSRelease(id="arch"), "x=1", "on the host")
    assert ka.install_fix("qemu", "in L1") == \
        "install QEMU in L1: apt-get install qemu-system-x86 (Debian) or dnf install qemu-kvm (RHEL)"


def test_the_grub_edit_changes_only_its_line():
    text = (FIX / "default-grub-debian12").read_text()
    new, _ = ka.edit_default_grub(text, ["intel_iommu=on"])
    old_lines, new_lines = text.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)   # the blank line after it stays
    assert [(a, b) for a, b in zip(old_lines, new_lines) if a != b] == [
        ('GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="intel_iommu=on"')]
