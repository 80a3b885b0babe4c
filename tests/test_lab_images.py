"""The lab image builder's pure parts."""
import pytest

from helpers.lab import images


def _moddir(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n"
        "kernel/lib/libcrc32c.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme/host/nvme.ko\n")
    return tmp_path


def test_closure_puts_dependencies_first_and_skips_builtin_modules(tmp_path):
    order = images.module_closure(_moddir(tmp_path), ["virtio_pci", "ext4", "nvme", "xfs"])
    assert order == ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_pci.ko",
                     "kernel/lib/libcrc32c.ko", "kernel/fs/xfs/xfs.ko"]


def test_a_module_neither_built_in_nor_on_disk_is_an_error(tmp_path):
    with pytest.raises(images.LabImageError, match="kernel module vfio_pci not found"):
        images.module_closure(_moddir(tmp_path), ["vfio_pci"])
