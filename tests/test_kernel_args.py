"""Stage 03's kernel-argument edit, for each distro family, on real files."""
from pathlib import Path

import pytest

from helpers.errors import RunbookError
from helpers.ops import kernel_args as ka
from machines import Machine

FIX = Path(__file__).parent / "fixtures" / "boot"


def test_iommu_args():
    assert ka.iommu_args("intel", False) == ["intel_iommu=on"]
    assert ka.iommu_args("amd", True) == ["iommu=pt"]  # the AMD driver has no "on": IVRS is enough
    assert ka.iommu_args("amd", False) == []
    assert ka.iommu_args("amd", True, tcg=True) == ["iommu=pt", "no_timer_check"]  # amd-iommu under TCG
    assert ka.iommu_args("intel", True, tcg=True) == ["intel_iommu=on", "iommu=pt"]
    assert not ka.ensure_kernel_args(Machine(), []).changed


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


def test_rhel_family_uses_grubby_like_the_seed():
    m = Machine(files={"/etc/os-release": (FIX / "os-release-centos7").read_text()},
                programs={"grubby"}, answers={r"^grubby --info=ALL$": (FIX / "grubby-info-centos7").read_text(),
                                              r"^grubby --update-kernel": ""})
    ch = ka.ensure_kernel_args(m, ["intel_iommu=on"])
    assert ch.changed and m.ran(r"^grubby --update-kernel ALL --args intel_iommu=on$")


def test_grubby_no_change_when_every_entry_has_them():
    info = (FIX / "grubby-info-centos7").read_text().replace("LANG=en_US.UTF-8", "LANG=en_US.UTF-8 intel_iommu=on")
    m = Machine(programs={"grubby"}, answers={r"^grubby --info=ALL$": info})
    ch = ka.ensure_kernel_args(m, ["intel_iommu=on"])
    assert not ch.changed and not m.ran("--update-kernel")


def test_debian_family_edits_default_grub_then_update_grub():
    m = Machine(files={"/etc/default/grub": (FIX / "default-grub-debian12").read_text()},
                programs={"update-grub"}, answers={r"^update-grub$": ""})
    ch = ka.ensure_kernel_args(m, ["intel_iommu=on", "iommu=pt"])
    assert ch.changed and m.ran(r"^update-grub$")
    assert 'GRUB_CMDLINE_LINUX="intel_iommu=on iommu=pt"' in m.files["/etc/default/grub"]
    assert "/etc/default/grub.before-runbook" in m.files
    m.log.clear()
    ch2 = ka.ensure_kernel_args(m, ["intel_iommu=on", "iommu=pt"])
    assert not ch2.changed and not m.ran("update-grub")


def test_grub2_mkconfig_when_there_is_no_update_grub():
    m = Machine(files={"/etc/default/grub": (FIX / "default-grub-centos7").read_text()},
                answers={r"grub2-mkconfig": ""})
    ka.ensure_kernel_args(m, ["intel_iommu=on"])
    assert m.ran(r"^grub2-mkconfig -o /boot/grub2/grub.cfg$")


def test_kernel_install_systems():
    m = Machine(files={"/etc/kernel/cmdline": "root=UUID=abc ro\n"}, programs={"kernel-install"},
                answers={r"kernel-install add": ""})
    ch = ka.ensure_kernel_args(m, ["amd_iommu=on"])
    assert ch.changed and m.files["/etc/kernel/cmdline"] == "root=UUID=abc ro amd_iommu=on\n"


def test_no_bootloader_tool_is_a_clear_error():
    with pytest.raises(RunbookError, match="no grubby, /etc/default/grub or kernel-install"):
        ka.ensure_kernel_args(Machine(), ["intel_iommu=on"])
