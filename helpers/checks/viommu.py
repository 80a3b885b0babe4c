"""Which vIOMMU L1 gets (intel or amd): judged once, from the parameters and L0's facts;
stage 02 builds L1 with it and records it, stage 01 checks QEMU's device for it."""
from __future__ import annotations

from ..params import Params


def decide_iommu_kind(p: Params, host_tables: list[str], cpu_vendor: str | None) -> tuple[str, str]:
    """Which vIOMMU L1 gets, decided once in stage 02: ``l1.iommu`` when set; with
    ``auto`` the lab keeps Intel (its tested default), a real host follows its own
    IOMMU (ACPI IVRS: AMD, DMAR: Intel), then its CPU vendor. Returns (kind, why)."""
    if p.l1.iommu != "auto":
        return p.l1.iommu, f"l1.iommu: {p.l1.iommu} in the parameters"
    if p.lab:
        return "intel", "l1.iommu: auto in the lab: the Intel vIOMMU (set l1.iommu: amd for the AMD one)"
    if "IVRS" in host_tables:
        return "amd", "l1.iommu: auto and the host's firmware has an AMD IOMMU (ACPI IVRS table)"
    if "DMAR" in host_tables:
        return "intel", "l1.iommu: auto and the host's firmware has an Intel IOMMU (ACPI DMAR table)"
    if cpu_vendor == "AuthenticAMD":
        return "amd", "l1.iommu: auto, no IOMMU table on the host, an AMD CPU (AuthenticAMD)"
    why = f"a {cpu_vendor} CPU" if cpu_vendor else "no CPU vendor read"
    return "intel", f"l1.iommu: auto, no IOMMU table on the host, {why}: the Intel vIOMMU"
