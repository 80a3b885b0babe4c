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


def test_a_build_waits_for_another_build_of_the_same_cache(tmp_path):
    """make run's setup builds the images in the background: a second build (stage 02, make images)
    waits for it, saying so, instead of failing or building the same images twice."""
    import fcntl
    import threading
    import time

    from helpers.lab import cache
    said = []
    other = open(tmp_path / ".lock", "w")
    fcntl.flock(other, fcntl.LOCK_EX)
    threading.Timer(1.5, other.close).start()  # the other build ends
    t0 = time.monotonic()
    with cache.locked(tmp_path, said.append):
        waited = time.monotonic() - t0
    assert 1.4 <= waited < 5
    assert said and said[0].startswith(f"another image build is running in {tmp_path}: waiting for it")


def test_a_build_that_never_ends_is_named_after_the_timeout(tmp_path):
    import fcntl

    from helpers.lab import cache
    other = open(tmp_path / ".lock", "w")
    fcntl.flock(other, fcntl.LOCK_EX)
    with pytest.raises(images.LabImageError, match="still runs after 1 s: see .*build.log"):
        with cache.locked(tmp_path, lambda _: None, timeout=1):
            pass
    other.close()
