"""The kernel-log lines that tell the IOMMU's state: the trimmed log keeps every line the
text asks you to look for, and the before/after table tells the two states apart
(recorded in the lab's L1: Debian's kernel before and after intel_iommu=on iommu=pt)."""
from pathlib import Path

from helpers.facts import iommu

FIX = Path(__file__).parent / "fixtures" / "dmesg"
BEFORE = iommu.log_lines((FIX / "lab-l1-before.txt").read_text())
AFTER = iommu.log_lines((FIX / "lab-l1-after.txt").read_text())


def test_log_lines_lose_their_timestamps():
    assert BEFORE[0].startswith("ACPI: DMAR ") and AFTER[2] == "DMAR: IOMMU enabled"


def test_the_trimmed_log_keeps_the_lines_the_text_names():
    shown = iommu.excerpt(AFTER, limit=10)
    for needle in ("DMAR: IOMMU enabled", "Intel(R) Virtualization Technology for Directed I/O",
                   "DMAR-IR: Enabled IRQ remapping", "Default domain type: Passthrough"):
        assert any(needle in ln for ln in shown), needle
    assert any(ln.startswith("[... ") and "lines not shown" in ln for ln in shown)
    assert sum("Adding to iommu group" in ln for ln in shown) == 3  # one per device: the first few are enough


def test_a_short_log_is_shown_whole():
    assert iommu.excerpt(BEFORE[:5]) == BEFORE[:5]


def test_markers_tell_before_from_after():
    before, after = dict(iommu.markers(BEFORE)), dict(iommu.markers(AFTER))
    cmdline = "intel_iommu=on was read from the kernel command line"
    assert before[cmdline] == "absent" and after[cmdline] == "DMAR: IOMMU enabled"
    irq = "interrupt remapping is on (no intel_iommu=on needed)"
    assert before[irq] == after[irq] == "DMAR-IR: Enabled IRQ remapping in xapic mode"
    domain = "how the host's own devices are mapped (iommu=pt: Passthrough)"
    assert "Translated" in before[domain] and "Passthrough" in after[domain]
    groups = "DMA remapping is on: devices are put in IOMMU groups"
    assert before[groups].startswith("pci 0000:00:00.0: Adding to iommu group 0  (and 3 more")
    assert not any("AMD" in k for k in after)


def test_stage_03_compares_with_what_stage_02_recorded(tmp_path):
    from helpers import nb
    from helpers.stages import configure_l1
    ctx = nb.stage("03", str(Path(__file__).parent.parent / "parameters" / "lab.yaml"),
                   str(tmp_path / "state.json"), show_picture=False)
    ctx.state.update("l1", iommu_before=dict(iommu.markers(BEFORE)))
    f = iommu.IOMMU(tables=["DMAR"], enabled_lines=[], irq_remap_lines=[], lines=AFTER, class_iommu=["dmar0"],
                    groups=13)
    rows = {r[0]: r[1:] for r in configure_l1.before_after(ctx, f)}
    assert rows["intel_iommu=on was read from the kernel command line"] == ("absent", "DMAR: IOMMU enabled")


def test_stage_02_shows_the_trimmed_log_and_records_the_table(tmp_path, monkeypatch):
    from helpers import nb
    from helpers.stages import build_l1
    from tests.machines import Machine
    ctx = nb.stage("02", str(Path(__file__).parent.parent / "parameters" / "lab.yaml"),
                   str(tmp_path / "state.json"), show_picture=False)
    l1 = Machine(files={"/proc/cmdline": "ro quiet console=ttyS0\n"},
                 answers={r"^lspci": "00:10.0 Non-Volatile memory controller [0108]: ... [1b36:0010]",
                          r"^dmesg$": (FIX / "lab-l1-before.txt").read_text()})
    monkeypatch.setattr(ctx, "l1", lambda: l1)
    shown, rows = build_l1.inspect(ctx)
    assert "ACPI: DMAR" in shown["dmesg | grep -E 'DMAR|IOMMU|iommu'"]
    assert dict(rows)["intel_iommu=on was read from the kernel command line"] == "absent"
    assert ctx.state["l1"]["iommu_before"] == dict(rows)


def test_a_rerun_after_stage_03_keeps_the_state_recorded_before(tmp_path, monkeypatch, capsys):
    from helpers import nb
    from helpers.stages import build_l1
    from tests.machines import Machine
    ctx = nb.stage("02", str(Path(__file__).parent.parent / "parameters" / "lab.yaml"),
                   str(tmp_path / "state.json"), show_picture=False)
    ctx.state.update("l1", iommu_before={"recorded": "before"})
    l1 = Machine(files={"/proc/cmdline": "ro quiet intel_iommu=on iommu=pt\n"},
                 answers={r"^lspci": "", r"^dmesg$": (FIX / "lab-l1-after.txt").read_text()})
    monkeypatch.setattr(ctx, "l1", lambda: l1)
    build_l1.inspect(ctx)
    assert ctx.state["l1"]["iommu_before"] == {"recorded": "before"}
    assert "already boots with the IOMMU argument" in capsys.readouterr().out
