"""What a trainee reads, fixed where it is made: every display has a text form, no raw Python
value reaches the output, sizes and times carry units, the kernel log keeps the NVMe's own line,
and a passing stage prints no kernel interrupt on the terminal."""
import asyncio
from pathlib import Path

from helpers import params as params_mod
from helpers import ui
from helpers.facts import iommu
from helpers.nb import Stage
from helpers.report import unreadable
from helpers.stages import build_l1, build_l2, verify_benchmark as vb
from helpers.state import State
from helpers.steps import Plan

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "parameters" / "lab.yaml"


def shown(monkeypatch, fn, *args) -> str:
    """What ``fn`` displays and prints, as text (each display's text/plain form)."""
    out = []
    monkeypatch.setattr(ui, "_display", lambda obj: out.append(repr(obj)))
    monkeypatch.setattr("builtins.print", lambda *a, **k: out.append(" ".join(map(str, a))))
    fn(*args)
    return "\n".join(out)


def test_l1s_boot_times_are_a_table_with_units_not_a_dict(monkeypatch):
    text = shown(monkeypatch, build_l1.WaitL1().show, Plan(build_l1.WaitL1.label),
                 {"agent_wait_s": 19.1, "ssh_wait_s": 2.0, "since_start_s": 21.2})
    assert "L1's guest agent answered  19.1 s" in text and "21.2 s" in text
    assert unreadable(text) == [] and "agent_wait_s" not in text


def test_the_choice_of_the_nvme_says_l2_select_in_words(tmp_path):
    p = params_mod.load(LAB)
    ctx = Stage("04", LAB, p, State(tmp_path / "state.json"))
    ctx.seen["devices"] = []
    plan = build_l2.SelectNVMe().plan(ctx)
    assert plan.reason.endswith("(l2.select: serial 1234)") and "{" not in plan.reason


def test_l1_giving_the_nvme_up_says_yes_or_no(monkeypatch):
    text = shown(monkeypatch, build_l2.GivenUp().show, Plan(build_l2.GivenUp.label),
                 {"driver": "vfio-pci", "vfio_node": "/dev/vfio/6", "vfio_node_exists": True, "disk_gone_from_l1": False})
    assert text.splitlines()[-1].split() == ["vfio-pci", "/dev/vfio/6", "yes", "no"] and unreadable(text) == []


def test_the_namespace_size_is_one_figure_in_gib_and_bytes_with_the_sector_size_in_bytes(monkeypatch):
    ns = {"device": "/dev/nvme0n1", "model": "QEMU NVMe Ctrl", "serial": "1234", "size_bytes": 1073741824,
          "sector_size": 512}
    text = shown(monkeypatch, vb.Namespaces().show, Plan(vb.Namespaces.label, data="L2"), (ns, "Node  SN ..."))
    assert "1 GiB (1,073,741,824 bytes)" in text and "512 bytes" in text and "1.07 GB" not in text.split("\n", 2)[-1]
    assert unreadable(text) == []


def test_pictures_and_command_outputs_have_a_text_form(monkeypatch):
    text = shown(monkeypatch, ui.picture, "04")
    assert text.startswith("[picture] stage 04, build L2:") and "this stage works on L2" in text
    assert shown(monkeypatch, ui.show_output, "nvme list", "out", "root@L2") == "[root@L2] ~$ nvme list\nout"


def test_the_trimmed_kernel_log_keeps_the_nvmes_own_iommu_group_line():
    lines = [f"pci 0000:00:0{i}.0: Adding to iommu group {i}" for i in range(8)]
    lines += ["pci 0000:00:10.0: Adding to iommu group 8", "DMAR: Intel(R) Virtualization Technology for Directed I/O"]
    shown_ = iommu.excerpt(lines, limit=5, devices=["0000:00:10.0"])
    assert "pci 0000:00:10.0: Adding to iommu group 8" in shown_
    assert "pci 0000:00:10.0: Adding to iommu group 8" not in iommu.excerpt(lines, limit=5)


def test_a_kernel_shutting_down_is_not_interrupted_but_a_running_one_still_can_be():
    from helpers.run import kernel
    km_class = kernel.kernel_manager_class()
    sent = []

    class Recording(km_class):
        shutting_down = False

        def __init__(self):
            pass

    async def parent(self):
        sent.append(self.shutting_down)
    base = km_class.__mro__[1]
    orig = base._async_interrupt_kernel
    base._async_interrupt_kernel = parent
    try:
        km = Recording()
        asyncio.run(km._async_interrupt_kernel())
        km.shutting_down = True
        asyncio.run(km._async_interrupt_kernel())
    finally:
        base._async_interrupt_kernel = orig
    assert sent == [False]


def test_a_fio_plan_says_its_target_region_repeats_and_seconds_in_words(tmp_path, monkeypatch):
    p = params_mod.load(LAB)
    ctx = Stage("05", LAB, p, State(tmp_path / "state.json"))
    ctx.seen["ns"] = {"device": "/dev/nvme0n1"}
    monkeypatch.setattr(vb, "_namespace_writes", lambda ctx, key, consent: None)
    what = vb.BenchL2().plan(ctx).actions[0].what
    assert what.startswith("run fio on the passed-through namespace /dev/nvme0n1, its first 32 MiB (raw namespace)")
    assert f"{p.bench.repeats} times, 0.5 s each" in what and "ms s" not in what
    monkeypatch.setattr(vb, "_namespace_writes", lambda ctx, key, consent: f"{key} is false")
    plan = vb.BenchL2().plan(ctx)
    assert plan.data[1] == ["randread-4k", "seqread-128k"] and "left out: randwrite-4k (verify.mkfs is false)" in plan.actions[0].what


def test_writes_on_the_namespace_stop_at_a_mounted_filesystem_or_a_signature_without_force_wipe(tmp_path, monkeypatch):
    p = params_mod.load(LAB)
    ctx = Stage("05", LAB, p, State(tmp_path / "state.json"))
    ctx.seen["ns"] = {"device": "/dev/nvme0n1"}
    monkeypatch.setattr(Stage, "l2", lambda self: object())
    monkeypatch.setattr(vb.storage, "mounts_of", lambda g, dev: ["/data"])
    monkeypatch.setattr(vb.storage, "signature", lambda g, dev: None)
    assert "mounted at /data" in vb._namespace_writes(ctx, "verify.mkfs", True)
    assert vb._namespace_writes(ctx, "bench.l0_write_consent", False) == "bench.l0_write_consent is false"
    monkeypatch.setattr(vb.storage, "mounts_of", lambda g, dev: [])
    monkeypatch.setattr(vb.storage, "signature", lambda g, dev: "xfs")
    p.verify.force_wipe = False
    assert vb._namespace_writes(ctx, "verify.mkfs", True) == \
        "/dev/nvme0n1 in L2 carries a xfs signature and verify.force_wipe is false"
    p.verify.force_wipe = True
    assert vb._namespace_writes(ctx, "verify.mkfs", True) is None
