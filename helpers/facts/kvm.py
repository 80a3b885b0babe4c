"""KVM facts: /dev/kvm, KVM modules, nested, the kernel command line, and what a
smoke boot of an ordinary kernel under KVM printed (judged, and kept for the boot,
by ``helpers.checks.smoke``)."""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field

from helpers.guest import Guest

DEV_KVM = "/dev/kvm"
KVM_ACCESS = "test -r /dev/kvm && test -w /dev/kvm"
KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
HW_MODULES = ("kvm_intel", "kvm_amd")
QEMU_BINARIES = ("qemu-system-x86_64", "/usr/libexec/qemu-kvm")
READS = ("/proc/cmdline", DEV_KVM, "/proc/modules", "/boot", "/proc/sys/kernel/random/boot_id",
         *(f"/sys/module/{m}/parameters" for m in KVM_MODULES),
         *(f"/sys/module/{m}/parameters/nested" for m in KVM_MODULES),
         *(q for q in QEMU_BINARIES if q.startswith("/")))
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_]|c)")


@dataclass
class Cmdline:
    """The kernel command line (/proc/cmdline), init's part after ``--`` left out."""

    raw: str
    args: list[str] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        """Value of the last ``key=value``; '' for a bare ``key``; None when absent."""
        found = None
        for a in self.args:
            k, sep, v = a.partition("=")
            if k == key:
                found = v if sep else ""
        return found

    def has(self, key: str) -> bool:
        return self.get(key) is not None


def cmdline(guest: Guest) -> Cmdline:
    raw = (guest.read_text("/proc/cmdline") or "").strip()
    words = raw.split()
    if "--" in words:
        words = words[:words.index("--")]
    return Cmdline(raw=raw, args=words)


@dataclass
class KVM:
    """/dev/kvm and the KVM modules (loaded or built in)."""

    dev_kvm: bool
    accessible: bool
    access_error: str = ""
    modules: list[str] = field(default_factory=list)
    modules_source: str = ""       # '/proc/modules', '/sys/module' (built in) or both
    nested: str | None = None      # raw parameter: Y/1/N/0
    nested_module: str | None = None
    nested_pvm: str | None = None  # nested_pvm=... on the kernel command line

    @property
    def hw_module(self) -> str | None:
        """kvm_intel or kvm_amd, when loaded."""
        return next((m for m in HW_MODULES if m in self.modules), None)

    @property
    def paravirtual(self) -> bool:
        """kvm_pvm without kvm_intel/kvm_amd: a paravirtual KVM."""
        return "kvm_pvm" in self.modules and self.hw_module is None

    @property
    def nested_on(self) -> bool | None:
        if self.nested is None:
            return None
        return self.nested.strip().upper() in ("Y", "1")


def kvm(guest: Guest) -> KVM:
    """/dev/kvm present and read-writable (``test -r -w``), KVM modules from
    /proc/modules (and /sys/module for built-in ones), the nested parameter."""
    dev = guest.exists(DEV_KVM)
    access = guest.run(KVM_ACCESS, timeout=30) if dev else None
    accessible = bool(access and access.ok)
    error = "" if accessible else ("no /dev/kvm" if not dev else
                                   (access.err.strip() or "not readable and writable by this user"))
    loaded, sources = [], []
    text = guest.read_text("/proc/modules")
    if text is not None:
        names = {line.split()[0] for line in text.splitlines() if line.strip()}
        loaded = [m for m in KVM_MODULES if m in names]
        sources.append("/proc/modules")
    builtin = [m for m in KVM_MODULES if m not in loaded and guest.exists(f"/sys/module/{m}/parameters")]
    if builtin:
        sources.append("/sys/module")
    modules = [m for m in KVM_MODULES if m in loaded or m in builtin]
    nested = nested_module = None
    for m in HW_MODULES:
        value = guest.read_text(f"/sys/module/{m}/parameters/nested")
        if value is not None:
            nested, nested_module = value.strip(), m
            break
    return KVM(dev_kvm=dev, accessible=accessible, access_error=error, modules=modules,
               modules_source=" + ".join(sources), nested=nested, nested_module=nested_module,
               nested_pvm=cmdline(guest).get("nested_pvm"))


def _version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def newest_kernel(guest: Guest) -> str | None:
    """The newest /boot/vmlinuz-* by version order, or None."""
    kernels = [n for n in guest.listdir("/boot") if n.startswith("vmlinuz-")]
    return f"/boot/{max(kernels, key=_version_key)}" if kernels else None


def find_qemu(guest: Guest) -> str | None:
    for q in QEMU_BINARIES:
        if (guest.exists(q) if q.startswith("/") else guest.which(q)):
            return q
    return None


def smoke_command(kernel: str, timeout: int, accel: str = "kvm", qemu: str = "qemu-system-x86_64") -> str:
    """The smoke boot: the kernel without initrd panics ("VFS: Unable to mount
    root fs"), which proves it booted; ``timeout`` stops a hang. ``pci=noearly``
    skips the early scans of PCI config space, each access a VM exit (seconds
    when the KVM itself runs nested under emulation)."""
    cpu = "host" if accel == "kvm" else "max"
    return (f"timeout -k 5 {int(timeout)} {shlex.quote(qemu)} -accel {accel} -cpu {cpu} -m 256 "
            f"-nographic -no-reboot -nodefaults -serial stdio -kernel {shlex.quote(kernel)} "
            f"-append 'console=ttyS0 panic=-1 quiet pci=noearly' </dev/null")


@dataclass
class SmokeBoot:
    """What one smoke boot did, as seen: the kernel and QEMU it used, and QEMU's exit
    code, output and time (``rc`` None: it did not run, for want of QEMU or a kernel)."""

    kernel: str | None
    qemu: str | None
    timeout: int
    accel: str = "kvm"
    rc: int | None = None
    out: str = ""
    err: str = ""
    seconds: float | None = None
    waited: float | None = None   # how long the command was given (timeout + a margin)


def last_line(text: str) -> str:
    """The last non-empty console line, terminal escapes removed."""
    lines = [ln.strip() for ln in ANSI.sub("", text).replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def boot_id(guest: Guest) -> str:
    return (guest.read_text("/proc/sys/kernel/random/boot_id") or "").strip()


def smoke_boot(guest: Guest, timeout: int = 20, accel: str = "kvm") -> SmokeBoot:
    """Boot the newest /boot/vmlinuz-* under QEMU with ``-accel kvm`` for at most
    ``timeout`` seconds, and keep what it printed."""
    kernel, qemu = newest_kernel(guest), find_qemu(guest)
    boot = SmokeBoot(kernel, qemu, timeout, accel)
    if qemu is None or kernel is None:
        return boot
    start = time.monotonic()
    boot.waited = timeout + 30  # `timeout -k 5` ends QEMU by timeout + 5 s; the rest is the guest's margin
    r = guest.run(smoke_command(kernel, timeout, accel, qemu), timeout=boot.waited)
    boot.seconds = round(time.monotonic() - start, 1)
    boot.rc, boot.out, boot.err = r.rc, r.out, r.err
    return boot
