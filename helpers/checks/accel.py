"""The accelerator, chosen in one place: KVM when a kernel boots under it (or, untested,
when /dev/kvm is backed by VT-x/AMD-V), TCG otherwise, unless the parameters force one."""
from __future__ import annotations

from dataclasses import dataclass

KVM_HW = "KVM hardware-backed"


@dataclass
class KvmUsability:
    """Can guests run under KVM here, and why (not)."""

    usable: bool
    why: str
    tested: bool


def forced_accel(params, role: str) -> str:
    """host.accel for L1 (judged at L0), l2.accel for L2 (judged in L1)."""
    return params.host.accel if role == "l0" else params.l2.accel


def kvm_usability(f) -> KvmUsability:
    """KVM is usable when a kernel boots under it; without a smoke boot, when
    /dev/kvm is backed by vmx/svm and kvm_intel/kvm_amd."""
    k, c, sm = f.kvm, f.cpu, f.smoke
    if not k.dev_kvm:
        flag = f"; the CPU shows {c.virt_flag}" if c.virt_flag else "; the CPU shows no vmx/svm"
        return KvmUsability(False, f"no /dev/kvm{flag}: guests will run under TCG", False)
    if not k.accessible:
        return KvmUsability(False, f"/dev/kvm is not usable by this user ({k.access_error}): "
                            "guests will run under TCG", False)
    if sm.usable:
        return KvmUsability(True, f"a kernel boots under KVM ({sm.reason})", True)
    if k.paravirtual or not c.virt_flag:
        what = ("no vmx/svm; /dev/kvm is paravirtual (kvm_pvm)" if k.paravirtual
                else "no vmx/svm; /dev/kvm is not backed by VT-x/AMD-V")
        why = f"{what}: guests will run under TCG"
    else:
        why = f"{c.virt_flag} + {k.hw_module or 'no kvm_intel/kvm_amd'}"
        if not sm.tested:
            usable = k.hw_module is not None
            return KvmUsability(usable, f"{why}; not smoke-tested ({sm.reason})"
                                + ("" if usable else ": guests will run under TCG"), False)
        why += ", but a kernel does not boot under KVM: guests will run under TCG"
    if sm.tested:
        why += f" (smoke boot: {sm.reason})"
    return KvmUsability(False, why, sm.tested)


def choose_accel(checks_or_facts, forced: str = "auto") -> tuple[str, str]:
    """('kvm' | 'tcg', reason) from host_checks' result, HostFacts or a
    KvmUsability, and the forced value (auto, kvm or tcg)."""
    if forced == "tcg":
        return "tcg", "forced: accel is tcg"
    if isinstance(checks_or_facts, KvmUsability):
        u = checks_or_facts
    elif hasattr(checks_or_facts, "smoke") and hasattr(checks_or_facts, "kvm"):   # HostFacts
        u = kvm_usability(checks_or_facts)
    else:
        found = [c.data for c in checks_or_facts if c.name == KVM_HW and isinstance(c.data, KvmUsability)]
        if not found:
            raise ValueError(f"no {KVM_HW!r} check among these checks: run host_checks first")
        u = found[0]
    if forced == "kvm":
        return "kvm", "forced: accel is kvm" + ("" if u.usable else f", although {u.why}")
    return ("kvm", u.why) if u.usable else ("tcg", u.why)
