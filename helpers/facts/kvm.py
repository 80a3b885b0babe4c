"""KVM facts: /dev/kvm, KVM modules, nested, the kernel command line, and a
smoke boot that tells whether KVM really runs an ordinary kernel."""
from __future__ import annotations

import dataclasses
import json
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
SMOKE_CACHE = "/run/nested-nvme-kvm-smoke.json"
SMOKE_BG = "/run/nested-nvme-kvm-smoke-bg"  # .key, .out, .err, .done of a smoke boot started in the background
READS = ("/proc/cmdline", DEV_KVM, "/proc/modules", "/boot", "/proc/sys/kernel/random/boot_id", SMOKE_CACHE,
         f"{SMOKE_BG}.key",
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
class Smoke:
    """Result of the smoke boot: 'usable', 'not usable' or 'not tested'."""

    status: str
    reason: str
    seconds: float | None = None
    last_line: str = ""
    kernel: str | None = None
    accel: str = "kvm"
    cached: bool = False  # measured earlier in this boot, not again now

    @property
    def usable(self) -> bool:
        return self.status == "usable"

    @property
    def tested(self) -> bool:
        return self.status != "not tested"


def last_line(text: str) -> str:
    """The last non-empty console line, terminal escapes removed."""
    lines = [ln.strip() for ln in ANSI.sub("", text).replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""




def _cached_smoke(guest: Guest, key: dict) -> Smoke | None:
    """The smoke result measured earlier in this same boot of ``guest``, if any."""
    text = guest.read_text(SMOKE_CACHE)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not data or data.get("key") != key:
        return None
    sm = Smoke(**data["smoke"])
    sm.cached = True
    return sm


def _smoke_key(guest: Guest, timeout: int, accel: str) -> dict:
    return {"boot_id": (guest.read_text("/proc/sys/kernel/random/boot_id") or "").strip(),
            "kernel": newest_kernel(guest), "qemu": find_qemu(guest), "timeout": timeout, "accel": accel}


def kvm_smoke(guest: Guest, timeout: int = 20, accel: str = "kvm") -> Smoke:
    """Boot the newest /boot/vmlinuz-* under QEMU with ``-accel kvm`` and see
    whether it reaches its panic within ``timeout`` seconds. The verdict is kept
    for the rest of this boot (keyed by boot id, kernel, QEMU and timeout); a
    boot started earlier by ``start_smoke`` with the same key is waited for."""
    key = _smoke_key(guest, timeout, accel)
    if key["boot_id"] and (cached := _cached_smoke(guest, key)):
        return cached
    sm = _background_smoke(guest, key) or _smoke(guest, key["kernel"], timeout, accel)
    if key["boot_id"] and sm.tested:
        guest.run(f"cat > {SMOKE_CACHE}", input=json.dumps({"key": key, "smoke": dataclasses.asdict(sm)}))
    return sm



def start_smoke(guest: Guest, timeout: int = 20, accel: str = "kvm") -> bool:
    """Start the smoke boot in the background (e.g. right after a reboot, so it
    overlaps other steps); ``kvm_smoke`` with the same arguments collects it.
    False when there is nothing to start (no QEMU or kernel, already measured)."""
    key = _smoke_key(guest, timeout, accel)
    if not (key["boot_id"] and key["kernel"] and key["qemu"]) or _cached_smoke(guest, key):
        return False
    cmd = smoke_command(key["kernel"], timeout, accel, key["qemu"])
    script = (f"rm -f {SMOKE_BG}.done; s=$(date +%s.%N); {cmd} >{SMOKE_BG}.out 2>{SMOKE_BG}.err; "
              f"echo $? $s $(date +%s.%N) >{SMOKE_BG}.tmp && mv {SMOKE_BG}.tmp {SMOKE_BG}.done")
    guest.run(f"cat > {SMOKE_BG}.key", input=json.dumps(key), check=True)
    guest.run(f"(setsid nohup sh -c {shlex.quote(script)} >/dev/null 2>&1 </dev/null &)", timeout=30, check=True)
    return True


def _background_smoke(guest: Guest, key: dict) -> Smoke | None:
    """The verdict of the background smoke boot with this key, once it has ended; None if there is none."""
    text = guest.read_text(f"{SMOKE_BG}.key")
    try:
        if not text or json.loads(text) != key:
            return None
    except ValueError:
        return None
    deadline = time.monotonic() + key["timeout"] + 40
    while (done := guest.read_text(f"{SMOKE_BG}.done")) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(1)
    rc, start, end = done.split()
    out, err = guest.read_text(f"{SMOKE_BG}.out") or "", guest.read_text(f"{SMOKE_BG}.err") or ""
    guest.run(f"rm -f {SMOKE_BG}.key")
    return _verdict(out, err, int(rc), round(float(end) - float(start), 1), key["kernel"], key["timeout"], key["accel"])


def _smoke(guest: Guest, kernel: str | None, timeout: int, accel: str) -> Smoke:
    """One smoke boot."""
    qemu = find_qemu(guest)
    if qemu is None:
        return Smoke("not tested", "QEMU is not installed (qemu-system-x86_64)", kernel=kernel, accel=accel)
    if kernel is None:
        return Smoke("not tested", "no kernel /boot/vmlinuz-* to boot", accel=accel)
    start = time.monotonic()
    r = guest.run(smoke_command(kernel, timeout, accel, qemu), timeout=timeout + 30)
    return _verdict(r.out, r.err, r.rc, round(time.monotonic() - start, 1), kernel, timeout, accel)


def _verdict(out: str, err: str, rc: int, seconds: float, kernel: str, timeout: int, accel: str) -> Smoke:
    """Judge a smoke boot by its console output and exit code."""
    seen = last_line(out)
    out = ANSI.sub("", out)
    if "Kernel panic" in out or ("Linux version" in out and "panic" in out):
        return Smoke("usable", f"the kernel booted to its expected panic in {seconds:.1f} s",
                     seconds, seen, kernel, accel)
    if rc == 124:
        return Smoke("not usable", f"hung: no kernel panic within {timeout} s "
                     f"(last line: {seen or 'nothing'!r})", seconds, seen, kernel, accel)
    why = last_line(err) or f"exit code {rc}"
    if re.search(r"could not load kernel|No such file|Permission denied.*vmlinuz", err, re.I):
        return Smoke("not tested", f"QEMU could not load {kernel}: {why}", seconds, seen, kernel, accel)
    return Smoke("not usable", f"QEMU failed: {why}", seconds, seen or why, kernel, accel)
