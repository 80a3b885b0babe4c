"""Stage 02's file operations on real files: the backing file, the overlay, the pinned key."""

import pytest

from helpers.guest import Local
from helpers.ops import l1 as l1_ops
from helpers.ops import l1_files
from helpers.state import State

L0 = Local()  # the file operations act through L0's command interface (here: this machine)


def planned(op, st):
    """A stage 02 file op as its step does it: the plan, then apply carries it out."""
    return l1_files.apply_op(op, st)


def test_backing_file_is_created_sparse_and_never_overwritten(tmp_path):
    st = State(tmp_path / "s.json")
    f = tmp_path / "nvme.raw"
    ch = planned(l1_files.plan_backing_file(L0, f, 1), st)
    assert ch.changed and f.stat().st_size == 1024 ** 3 and f.stat().st_blocks == 0
    f.write_bytes(b"data")  # the user's data
    again = planned(l1_files.plan_backing_file(L0, f, 1), st)
    assert not again.changed and f.read_bytes() == b"data" and "not the 1 GiB asked" in again.detail
    assert st.created("files") == [str(f)]


def test_overlay_follows_the_golden_image(tmp_path):
    g1, g2, ov = tmp_path / "g1.raw", tmp_path / "g2.raw", tmp_path / "l1.qcow2"
    for g in (g1, g2):
        g.write_bytes(b"\0" * 1024 * 1024)
    st = State(tmp_path / "s.json")
    assert planned(l1_files.plan_overlay(L0, g1, ov), st).changed
    assert not planned(l1_files.plan_overlay(L0, g1, ov), st).changed
    assert not planned(l1_files.plan_overlay(L0, g2, ov, running=True), st).changed  # L1 runs on it: kept
    assert planned(l1_files.plan_overlay(L0, g2, ov), st).changed
    assert l1_ops.overlay_backing(L0, ov) == str(g2)


def test_key_copy_is_private_and_idempotent(tmp_path):
    st = State(tmp_path / "s.json")
    src, dest = tmp_path / "k", tmp_path / "copy"
    src.write_text("KEY")
    assert planned(l1_files.plan_key(L0, src, dest), st).changed
    assert oct(dest.stat().st_mode & 0o777) == "0o600" and dest.read_text() == "KEY"
    assert not planned(l1_files.plan_key(L0, src, dest), st).changed


def test_known_hosts_pins_the_forwarded_port(tmp_path):
    st = State(tmp_path / "s.json")
    kh = tmp_path / "known_hosts"
    planned(l1_files.plan_known_hosts(L0, kh, "127.0.0.1", 2222, "ssh-ed25519 AAAAKEY root@l1"), st)
    assert kh.read_text() == "[127.0.0.1]:2222 ssh-ed25519 AAAAKEY\n"
    assert not planned(l1_files.plan_known_hosts(L0, kh, "127.0.0.1", 2222, "ssh-ed25519 AAAAKEY"), st).changed


def test_files_that_cannot_fit_are_refused_before_anything_is_created(tmp_path):
    from helpers.errors import RunbookError
    from helpers.guest import Local
    from helpers.ops.l1 import check_space
    work = tmp_path / "work"
    with pytest.raises(RunbookError) as e:
        check_space(Local(), work, work / "nvme.raw", 10 ** 6, lab=True)  # a million GiB
    assert "not enough free space on the filesystem at " in e.value.message
    assert f"for {work / 'nvme.raw'}, {work}:" in e.value.message and "nothing was created" in e.value.hint
    assert not work.exists()
    check_space(Local(), work, work / "nvme.raw", 0.001, lab=True)  # fits: no error


def test_a_write_that_runs_out_of_room_removes_the_half_made_file(tmp_path):
    import errno
    from helpers.ops.l1 import no_space
    half = tmp_path / "nvme.raw"
    half.write_bytes(b"x" * 10)
    err = no_space(L0, half, "No space left on device")
    assert not half.exists()
    assert err.message.startswith(f"could not write {half}: the filesystem is full (filesystem at /")


def test_a_crashed_l1_ends_the_wait_for_its_agent_at_once(monkeypatch, tmp_path):
    """QEMU aborting while L1 boots is named at once, not waited on until the boot timeout."""
    import time

    from helpers.errors import RunbookError

    class NoAnswer:
        def ping(self, timeout=3):
            return False

    class Stopped:
        def is_active(self, name):
            return False

    monkeypatch.setattr(l1_ops, "l1_agent", lambda lv, name: NoAnswer())
    t0 = time.monotonic()
    with pytest.raises(RunbookError, match=r"L1 \(nested-kvm\) stopped while it was booting") as e:
        l1_ops.wait_for_agent(Stopped(), "nested-kvm", 600, tmp_path / "console.log")
    assert time.monotonic() - t0 < 30 and "--from 02" in e.value.hint
    assert "/var/log/libvirt/qemu/nested-kvm.log" in str(e.value)
