"""Which vIOMMU L1 gets (intel or amd), and with which options: judged once, from the
parameters and L0's facts; stage 02 builds L1 with it and records it, stage 01 checks
QEMU's device for it and names the running QEMU's known hazards.

``auto`` is QEMU's Intel vIOMMU on every host, Intel or AMD, as Proxmox VE and Red Hat's
virtualization tests do: ``intel-iommu`` is fully emulated (it does not depend on the
host's CPU vendor or IOMMU) and it is the most used and tested one. ``amd`` (QEMU's
``amd-iommu``) is a choice the user makes; what it needs depends on the QEMU that runs
L1, and ``amd_iommu_options`` decides it from that QEMU's version and the properties its
``-device amd-iommu,help`` lists (upstream history, read in ``hw/i386/amd_iommu.c``):

* 9.2.0 to 10.0.2 (c1f46999ef50 "amd_iommu: Add support for pass though mode"): with
  ``pt=on``, the default of every x86 vIOMMU (``hw/i386/x86-iommu.c``),
  ``amdvi_host_dma_iommu()`` gives every device the untranslated address space. The
  NVMe that L1 hands to L2 through VFIO sits in an IOMMU domain of L1, so its DMA goes
  to L2's guest addresses untranslated and L2's nvme driver times out on its first
  admin command. Fixed by 31753d5a336f "hw/i386/amd_iommu: Fix device setup failure
  when PT is on" (10.1.0, and 10.0.3 of the stable series): the runbook sets ``pt=off``
  on 9.2 <= QEMU < 10.0.3. Elsewhere ``pt`` is left alone: before 9.2 and after the fix
  amd-iommu does not read it.
* Before 10.2, a device on a PCI bus other than 0 is given the wrong device ID
  (27d6a0ec0b "amd_iommu: Fix handling of devices on buses != 0"): the NVMe stays on
  pcie.0 (bus 0), through QEMU arguments even where libvirt could define it natively
  (its ``<disk bus='nvme'>`` goes behind a root port).
* From 10.2, DMA remapping happens only with the new ``dma-remap`` property on (off by
  default: "amd_iommu: Add dma-remap property to AMD vIOMMU device";
  ``amdvi_switch_address_space()`` uses the translated address space only when
  ``dma_remap`` is set): the runbook sets ``dma-remap=on`` wherever QEMU lists it.
* ``xtsup=on`` with 255 vCPUs or fewer stops the guest booting before 10.0.3 (0f178860df
  "Fix xtsup when vcpus < 255"): the runbook never sets ``xtsup`` (it matters only
  beyond 255 vCPUs).
* ``device-iotlb`` is left out (QEMU's default, off): it serves devices that send PCIe
  ATS translation requests, and QEMU's emulated NVMe has no ATS capability
  (``nvme_init_pci()`` in ``hw/nvme/ctrl.c`` adds power management, the PCIe endpoint,
  FLR, MSI-X and, when asked, ARI, SR-IOV and DOE; never ``pcie_ats_init()``), so it
  never asks for a translation: the option would do nothing for it. Measured on QEMU
  10.0.2 (LAB-FACTS): ``device-iotlb=off,pt=off`` passes the lab as ``on`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..params import Params

INTEL_WHY = ("QEMU's Intel vIOMMU (intel-iommu) on every host, Intel or AMD, as Proxmox VE and Red Hat's "
             "virtualization tests do: it is fully emulated, so it does not depend on the host's CPU vendor or "
             "IOMMU, and it is the most used and tested one (set l1.iommu: amd for QEMU's AMD vIOMMU)")


def decide_iommu_kind(p: Params, host_tables: list[str], cpu_vendor: str | None) -> tuple[str, str]:
    """Which vIOMMU L1 gets, decided once in stage 02: ``l1.iommu`` when set; ``auto`` is
    the Intel vIOMMU on every host. The host's own IOMMU table and CPU vendor are only
    named in the reason. Returns (kind, why)."""
    if p.l1.iommu != "auto":
        return p.l1.iommu, f"l1.iommu: {p.l1.iommu} in the parameters"
    host = [f"ACPI {t}" for t in host_tables] + ([cpu_vendor] if cpu_vendor else [])
    seen = f" (this host: {', '.join(host)})" if host else ""
    return "intel", f"l1.iommu: auto: {INTEL_WHY}{seen}"


# --- QEMU's amd-iommu: the options for the QEMU that runs L1 -------------------------------

PT_HAZARD_FROM = (9, 2, 0)     # c1f46999ef50: pt=on bypasses translation for every device
PT_FIXED_IN = (10, 0, 3)       # 31753d5a336f, in 10.0.3 (stable) and 10.1.0
BUS0_FIXED_IN = (10, 2, 0)     # 27d6a0ec0b: devices on buses != 0
DMA_REMAP_FROM = (10, 2, 0)    # the dma-remap property (default off)
XTSUP_FIXED_IN = (10, 0, 3)    # 0f178860df: xtsup=on with <= 255 vCPUs
TESTED_FROM = (10, 0, 2)       # the lab's QEMU (bookworm-backports), where the AMD chain was measured


def qemu_version_tuple(text: str | None) -> tuple[int, ...] | None:
    """'10.0.2' (or 'QEMU 10.0.2 (Debian ...)') -> (10, 0, 2); None when no version is read."""
    import re
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


@dataclass
class Hazard:
    """A known problem of this QEMU's amd-iommu and what the runbook does about it."""
    what: str
    handled: str


@dataclass
class AmdIommu:
    """L1's ``amd-iommu`` for the QEMU that runs it: its options (in order), why each,
    the known hazards of that QEMU, and ``refused`` when the AMD chain cannot work there."""

    qemu_version: str | None
    properties: dict[str, str] | None          # -device amd-iommu,help: name -> default
    options: dict[str, str] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)
    hazards: list[Hazard] = field(default_factory=list)
    nvme_on_bus0: bool = True                  # the NVMe must sit on pcie.0 (bus 0)
    refused: str = ""                          # why the AMD chain cannot work on this QEMU
    fix: str = ""

    @property
    def device(self) -> str:
        """QEMU's -device value, e.g. ``amd-iommu,intremap=on,pt=off``."""
        return "amd-iommu," + ",".join(f"{k}={v}" for k, v in self.options.items())

    @property
    def option_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.options.items())

    def record(self) -> dict:
        """What the run state keeps (stage 02, next to iommu_kind)."""
        return {"device": self.device, "options": self.option_text, "qemu": self.qemu_version,
                "why": self.why, "hazards": [f"{h.what}: {h.handled}" for h in self.hazards],
                "nvme_on_bus0": self.nvme_on_bus0}


def amd_iommu_options(qemu_version: str | None, properties: dict[str, str] | None) -> AmdIommu:
    """The ``amd-iommu`` options that make DMA remapping work on this QEMU, from its version
    and (where it can tell more reliably) the property list of ``-device amd-iommu,help``
    (None: not read). See the module's text for the upstream history behind each rule."""
    c = AmdIommu(qemu_version, properties)
    v = qemu_version_tuple(qemu_version)
    for rule in (_amd_intremap, _amd_pt, _amd_dma_remap):   # each may refuse: then the rest does not matter
        rule(c, v)
        if c.refused:
            return c
    _amd_bus0(c, v)
    _amd_hazards(c, v)
    c.why.append("device-iotlb left off: QEMU's emulated NVMe has no ATS capability, so a device IOTLB "
                 "does nothing for it")
    return c


def _shown(c: AmdIommu) -> str:
    return f"QEMU {c.qemu_version}" if c.qemu_version else "a QEMU of unknown version"


def _offers(c: AmdIommu, name: str) -> bool | None:
    """Whether this QEMU's amd-iommu lists the property ``name`` (None: its list was not read)."""
    return None if c.properties is None else name in c.properties


def _amd_intremap(c: AmdIommu, v: tuple[int, ...] | None) -> None:
    if _offers(c, "intremap") is False:
        c.refused = (f"{_shown(c)}'s amd-iommu has no intremap property: L1 would get no interrupt remapping, "
                     "which VFIO in L1 needs to hand the NVMe to L2")
        c.fix = "use l1.iommu: intel (or auto), or a QEMU whose amd-iommu offers intremap (QEMU 10.0.3 or newer)"
        return
    c.options["intremap"] = "on"
    c.why.append("intremap=on: interrupt remapping in L1, which VFIO needs (with the split irqchip)")


def _amd_pt(c: AmdIommu, v: tuple[int, ...] | None) -> None:
    """pt=off where pt=on bypasses translation for every device (9.2 to 10.0.2), or the version is unknown."""
    if not (v is None or PT_HAZARD_FROM <= v < PT_FIXED_IN):
        return
    if _offers(c, "pt") is False:
        c.refused = (f"{_shown(c)} gives every device untranslated DMA while amd-iommu's pt is on, and this "
                     "build lists no pt property to turn it off")
        c.fix = "use l1.iommu: intel (or auto), or QEMU 10.0.3 / 10.1 or newer"
        return
    c.options["pt"] = "off"
    if v is None:
        c.why.append("pt=off: QEMU's version is unknown, and 9.2 to 10.0.2 give every device untranslated "
                     "DMA while pt is on (its default); where pt is ignored, pt=off changes nothing")
    else:
        c.why.append(f"pt=off: {_shown(c)} (9.2 to 10.0.2) gives every device untranslated DMA while pt is on "
                     "(its default), so the NVMe in L2's IOMMU domain would DMA to the wrong addresses")
        c.hazards.append(Hazard("pt=on (amd-iommu's default) gives every device untranslated DMA "
                                "(fixed in 10.0.3 and 10.1: 31753d5a336f)", "the runbook sets pt=off"))


def _amd_dma_remap(c: AmdIommu, v: tuple[int, ...] | None) -> None:
    """dma-remap=on wherever QEMU lists it (or, its list not read, from 10.2); refused on a 10.2 without it."""
    if _offers(c, "dma-remap") or (c.properties is None and v is not None and v >= DMA_REMAP_FROM):
        c.options["dma-remap"] = "on"
        c.why.append("dma-remap=on: from QEMU 10.2 amd-iommu translates DMA only with it (default off)")
    elif v is not None and v >= DMA_REMAP_FROM:
        c.refused = (f"{_shown(c)}'s amd-iommu translates DMA only with dma-remap=on, and this build lists no "
                     "dma-remap property")
        c.fix = "use l1.iommu: intel (or auto), or a QEMU build whose amd-iommu lists dma-remap"


def _amd_bus0(c: AmdIommu, v: tuple[int, ...] | None) -> None:
    """The NVMe on pcie.0 (bus 0) before 10.2 (or an unknown version)."""
    c.nvme_on_bus0 = v is None or v < BUS0_FIXED_IN
    if c.nvme_on_bus0:
        c.why.append("the NVMe on pcie.0 (bus 0): before QEMU 10.2 amd-iommu gives a device on another bus "
                     "the wrong device ID")
        if v is not None:
            c.hazards.append(Hazard("devices on a PCI bus other than 0 get the wrong device ID (fixed in 10.2: "
                                    "27d6a0ec0b)", "the runbook keeps the NVMe on pcie.0 (bus 0)"))


def _amd_hazards(c: AmdIommu, v: tuple[int, ...] | None) -> None:
    """The known hazards the runbook only names: xtsup before 10.0.3, a QEMU older than the lab's."""
    if v is not None and v < XTSUP_FIXED_IN and _offers(c, "xtsup"):
        c.hazards.append(Hazard("xtsup=on with 255 vCPUs or fewer stops the guest booting (fixed in 10.0.3: "
                                "0f178860df)", "the runbook leaves xtsup off"))
    if v is not None and v < TESTED_FROM:
        c.hazards.append(Hazard(f"the AMD chain was not measured on QEMU older than "
                                f"{'.'.join(map(str, TESTED_FROM))} (the stable series fixed several amd-iommu "
                                "bugs in 10.0.3)", "nothing; if L2's nvme times out, use l1.iommu: intel"))
