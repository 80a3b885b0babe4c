"""Stage 04's L1 baseline: with consent, a baseline that cannot be measured stops the
stage with the reason, instead of passing with no L1 rows in results.json."""
from pathlib import Path

import pytest

from helpers import params as params_mod
from helpers.errors import RunbookError
from helpers.facts.pci import PciDevice, NVME_CLASS
from helpers.nb import Stage
from helpers.state import State
from helpers.stages import build_l2

ROOT = Path(__file__).resolve().parent.parent


def _ctx(tmp_path, consent=True, disks=("nvme0n1",), baseline=None):
    p = params_mod.load(ROOT / "parameters" / "lab.yaml")
    p.l2.baseline_consent = consent
    st = State(tmp_path / "state.json")
    st.set("nvme", {"bdf_in_l1": "0000:00:10.0", "disks_in_l1": list(disks)})
    if baseline:
        st.set("baseline", baseline)
    return Stage(number="04", params_file=ROOT / "parameters" / "lab.yaml", params=p, state=st)


def _baseline(ctx, dev):
    """Stage 04's Baseline step: its plan (which refuses), then its apply of that plan."""
    ctx.seen["dev"] = dev
    step = build_l2.Baseline()
    plan = step.plan(ctx)
    assert not plan.changes  # these tests never measure
    return step.apply(ctx, plan)[0]


def _dev(driver):
    return PciDevice(name="pci_0000_00_10_0", bdf="0000:00:10.0", pci_class=NVME_CLASS, driver=driver)


def test_no_namespace_found_on_the_nvme_driver_fails_the_stage_with_consent(tmp_path):
    with pytest.raises(RunbookError) as e:
        _baseline(_ctx(tmp_path, disks=()), _dev("nvme"))
    assert "0000:00:10.0 is on the nvme driver in L1 but no namespace block device" in e.value.message
    assert "--stages 99" in e.value.hint


def test_a_device_already_on_vfio_pci_is_named_as_such(tmp_path):
    with pytest.raises(RunbookError) as e:
        _baseline(_ctx(tmp_path), _dev("vfio-pci"))
    assert "is on the vfio-pci driver in L1 now, not nvme" in e.value.message


def test_without_consent_the_read_profiles_are_planned_and_the_write_profile_left_out(tmp_path):
    ctx = _ctx(tmp_path, consent=False)
    ctx.seen["dev"] = _dev("nvme")
    plan = build_l2.Baseline().plan(ctx)
    assert plan.data == ("/dev/nvme0n1", ["randread-4k", "seqread-128k"])
    what = plan.actions[0].what
    assert "reads only" in what and "left out: randwrite-4k (they write: l2.baseline_consent is false)" in what
    assert "--rw=randwrite" not in plan.actions[0].commands[0] and "--filename=/dev/nvme0n1" in plan.actions[0].commands[0]
    ctx = _ctx(tmp_path / "c", consent=True)
    ctx.seen["dev"] = _dev("nvme")
    assert build_l2.Baseline().plan(ctx).data[1] == ["randread-4k", "seqread-128k", "randwrite-4k"]


def test_with_a_baseline_nothing_is_measured(tmp_path):
    done = _baseline(_ctx(tmp_path / "b", baseline=[{"layer": "L1"}]), _dev("vfio-pci"))
    assert done.changed is False and "already measured" in done.detail
