"""Kernel arguments, the distribution's way: one class per way, chosen once by ``bootloader(guest)``.

- ``Grubby`` (RHEL family, the seed's CentOS 7): ``grubby --update-kernel ALL --args ...``;
- ``DefaultGrub`` (Debian family, or grub without grubby): ``GRUB_CMDLINE_LINUX`` in
  /etc/default/grub, then ``update-grub`` (or ``grub2-mkconfig``/``grub-mkconfig``);
- ``KernelInstall`` (systemd-boot/BLS without grub): /etc/kernel/cmdline, then ``kernel-install``.
"""
from __future__ import annotations

import difflib
import re
import shlex

from ..errors import RunbookError
from ..guest import Guest
from ..ops import Change, did, no_change
from .base import DistroPlan, Edit

KERNEL_INSTALL = 'kernel-install add "$(uname -r)" "/lib/modules/$(uname -r)/vmlinuz"'


def iommu_args(kind: str, passthrough: bool, tcg: bool = False) -> list[str]:
    """``intel_iommu=on`` (the seed) for Intel, plus ``iommu=pt`` when asked.

    AMD has no ``on``: the AMD driver starts by itself whenever the firmware has an
    IVRS table, and ``amd_iommu=`` takes only options such as ``off``, ``fullflush``
    or ``force_isolation`` (drivers/iommu/amd/init.c, parse_amd_iommu_options, logs
    ``AMD-Vi: Unknown option - 'on'``). So for AMD only ``iommu=pt``, when asked."""
    args = ["intel_iommu=on"] if kind == "intel" else []
    args += ["iommu=pt"] if passthrough else []
    if kind == "amd" and tcg:
        # L1 under TCG behind QEMU's amd-iommu: Linux's check that the 8254 timer reaches it
        # through the IO-APIC fails ("..MP-BIOS bug: 8254 timer not connected to IO-APIC" even
        # without the AMD driver), and with interrupt remapping on it may not fall back, so it
        # panics: "timer doesn't work through Interrupt-remapped IO-APIC" (io_apic.c,
        # check_timer). no_timer_check skips that test; L1 keeps its local APIC timer.
        args.append("no_timer_check")
    return args


GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")


def grub_entry_id(cfg: str, release: str) -> str | None:
    """GRUB's id of the ``release`` entry in grub.cfg, as ``GRUB_DEFAULT`` takes it:
    ``<submenu id>><entry id>`` (Debian puts every kernel but the default in a submenu)."""
    entry = re.search(rf"menuentry '[^']*' [^\n]*\$menuentry_id_option '(gnulinux-{re.escape(release)}-advanced-[^']+)'",
                      cfg)
    if not entry:
        return None
    submenu = re.search(r"^submenu '[^']*' [^\n]*\$menuentry_id_option '([^']+)'", cfg, re.M)
    return f"{submenu.group(1)}>{entry.group(1)}" if submenu else entry.group(1)


def set_grub_default(text: str, value: str) -> str:
    """/etc/default/grub's text with ``GRUB_DEFAULT="value"``."""
    line = f'GRUB_DEFAULT="{value}"'
    if re.search(r"^GRUB_DEFAULT=.*$", text, re.M):
        return re.sub(r"^GRUB_DEFAULT=.*$", line, text, count=1, flags=re.M)
    return text.rstrip("\n") + f"\n{line}\n"


def missing_args(current: str, wanted: list[str]) -> list[str]:
    """The wanted ``key=value`` arguments the command line lacks (same key, other value counts as missing)."""
    have = shlex.split(current)
    return [w for w in wanted if w not in have]


def edit_default_grub(text: str, wanted: list[str]) -> tuple[str, list[str]]:
    """Add the missing arguments to GRUB_CMDLINE_LINUX in /etc/default/grub's text.
    Returns the new text and what was added (nothing: unchanged text)."""
    m = re.search(r'^GRUB_CMDLINE_LINUX=(["\']?)(.*?)\1[ \t]*$', text, re.M)
    if m is None:
        add = wanted
        return text.rstrip("\n") + f'\nGRUB_CMDLINE_LINUX="{" ".join(add)}"\n', add
    current = m.group(2)
    # an argument set in GRUB_CMDLINE_LINUX_DEFAULT counts as present
    d = re.search(r'^GRUB_CMDLINE_LINUX_DEFAULT=(["\']?)(.*?)\1[ \t]*$', text, re.M)
    add = missing_args(current + " " + (d.group(2) if d else ""), wanted)
    if not add:
        return text, []
    # a same-key argument with another value (intel_iommu=off) is replaced
    keys = {a.split("=")[0] for a in add}
    kept = [a for a in shlex.split(current) if a.split("=")[0] not in keys]
    line = f'GRUB_CMDLINE_LINUX="{" ".join(kept + add)}"'
    return text[: m.start()] + line + text[m.end():], add


def grubby_args(info: str) -> dict[str, str]:
    """kernel path -> args, from ``grubby --info=ALL``."""
    out, kernel = {}, None
    for line in info.splitlines():
        k, _, v = line.partition("=")
        v = v.strip().strip('"')
        if k == "kernel":
            kernel = v
        elif k == "args" and kernel:
            out[kernel] = v
    return out


def diff(path: str, old: str, new: str) -> str:
    """A unified diff of a file's old and new text."""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path + " (new)"))


def line_edit(path: str, key: str, line: str, text: str) -> tuple[str, str]:
    """The command that sets ``key``'s line of ``path`` (``text`` now) to ``line``, touching no
    other line (sed on that line, or appended when there is none), and the text it leaves."""
    if re.search(rf"^{key}=.*$", text, re.M):
        sed = line.replace("\\", "\\\\").replace("|", "\\|").replace("&", "\\&")
        return (f"sed -i {shlex.quote(f's|^{key}=.*|{sed}|')} {path}",
                re.sub(rf"^{key}=.*$", lambda _: line, text, flags=re.M))
    if not text:
        return f"echo {shlex.quote(line)} > {path}", line + "\n"
    return f"sed -i {shlex.quote(f'$a {line}')} {path}", (text if text.endswith("\n") else text + "\n") + line + "\n"


def append_args(path: str, text: str, add: list[str]) -> tuple[str, str] | None:
    """``add`` appended inside GRUB_CMDLINE_LINUX's quotes, whatever else the line holds (the
    command safe to paste on any server), and the text it leaves; None when the line is not
    double-quoted, empty, or one of ``add`` replaces an argument with the same key."""
    m = re.search(r'^GRUB_CMDLINE_LINUX="([^"]*)"', text, re.M)
    keys = {a.split("=")[0] for a in add}
    if m is None or not m.group(1).strip() or any(a.split("=")[0] in keys for a in shlex.split(m.group(1))):
        return None  # the line is set whole (it was empty, or an argument's value changes)
    args = " ".join(add)
    pattern = r'^(GRUB_CMDLINE_LINUX="[^"]*)"'
    sed = f's/{pattern}/\\1 {args}"/'
    return (f"sed -i -E {shlex.quote(sed)} {path}",
            re.sub(pattern, lambda mm: f'{mm.group(1)} {args}"', text, flags=re.M))


def run_plan(guest: Guest, plan: DistroPlan, timeout: float = 300) -> None:
    """Run exactly the commands ``plan`` shows, on ``guest`` (``helpers.execute``)."""
    from ..execute import run_on
    from ..steps import Action
    for e in plan.edits:
        run_on(guest, Action(guest.name, e.what, list(e.commands)), timeout=timeout)


def write_command(path: str, new: str) -> str:
    """The command that writes ``new`` into ``path``, as typed at a prompt."""
    return f"cat > {path} <<'EOF'\n{new.rstrip(chr(10))}\nEOF"


class Bootloader:
    """One way of adding kernel arguments. ``detect`` says whether a system boots this way."""

    name = ""

    @classmethod
    def detect(cls, guest: Guest) -> "Bootloader | None":
        raise NotImplementedError

    def what(self, wanted: list[str]) -> str:
        return f"kernel arguments {' '.join(wanted)} ({self.name})"

    def plan(self, guest: Guest, wanted: list[str]) -> DistroPlan:
        """What apply would run to make the next boot carry ``wanted`` (reads only)."""
        raise NotImplementedError

    def apply(self, guest: Guest, plan: DistroPlan) -> Change:
        """Run exactly ``plan``'s edits."""
        raise NotImplementedError

    def plan_default_kernel(self, guest: Guest, release: str) -> DistroPlan:
        """What apply would run so that the next boot starts kernel ``release`` (reads only)."""
        raise RunbookError(f"{guest.name}: the runbook makes a kernel the default with grub or grubby only "
                           f"(this system uses {self.name})",
                           hint=f"make {release} the default boot entry by hand, then rerun stage 03")

    def apply_default_kernel(self, guest: Guest, plan: DistroPlan) -> Change:
        if not plan.changes:
            return no_change(plan.what, plan.reason)
        run_plan(guest, plan)
        return did(plan.what, plan.data["said"])

    @staticmethod
    def fix(args: str, where: str) -> str:
        """How to add ``args`` by hand, for a check's fix."""
        return f"{where}: add '{args}' to the kernel command line in the bootloader's configuration, then reboot"


class Grubby(Bootloader):
    """The RHEL family: grubby edits every boot entry (the seed: ``grubby --update-kernel ALL --args intel_iommu=on``)."""

    name = "grubby"

    @classmethod
    def detect(cls, guest):
        return cls() if guest.which("grubby") else None

    def plan(self, guest, wanted):
        if not wanted:
            return DistroPlan(self.what(wanted), reason="no kernel argument to add")
        info = guest.run("grubby --info=ALL", check=True).out
        lacking = {k: missing_args(a, wanted) for k, a in grubby_args(info).items()}
        add = sorted({a for v in lacking.values() for a in v})
        if not add:
            return DistroPlan(self.what(wanted), reason="every kernel entry has them (grubby --info=ALL)")
        cmd = shlex.join(["grubby", "--update-kernel", "ALL", "--args", " ".join(add)])
        entries = ", ".join(k for k, v in lacking.items() if v)
        return DistroPlan(self.what(wanted), [Edit(f"add {' '.join(add)} to every boot entry ({entries})", [cmd])],
                          data={"add": add, "commands": [cmd]})

    def apply(self, guest, plan):
        if not plan.changes:
            return no_change(plan.what, plan.reason)
        run_plan(guest, plan)
        return did(plan.what, "; ".join(plan.data["commands"]))

    def plan_default_kernel(self, guest, release):
        what, kernel = f"default kernel {release} ({self.name})", f"/boot/vmlinuz-{release}"
        if guest.run("grubby --default-kernel").out.strip() == kernel:
            return DistroPlan(what, reason=f"grubby --default-kernel is {kernel}")
        cmd = shlex.join(["grubby", "--set-default", kernel])
        return DistroPlan(what, [Edit(f"make {kernel} the default boot entry", [cmd])],
                          data={"said": cmd})

    @staticmethod
    def fix(args, where):
        return f"{where}: grubby --update-kernel ALL --args '{args}', then reboot"


class DefaultGrub(Bootloader):
    """GRUB_CMDLINE_LINUX in /etc/default/grub, then the tool that writes grub.cfg."""

    name = "grub"
    FILE = "/etc/default/grub"
    BACKUP = "/etc/default/grub.before-runbook"

    def __init__(self, mkconfig: str = "update-grub"):
        self.mkconfig = mkconfig

    @classmethod
    def detect(cls, guest):
        if not guest.exists(cls.FILE):
            return None
        if guest.which("update-grub"):
            return cls("update-grub")
        if guest.which("grub-mkconfig") and not guest.which("grub2-mkconfig"):
            return cls("grub-mkconfig -o /boot/grub/grub.cfg")
        return cls("grub2-mkconfig -o /boot/grub2/grub.cfg")

    def plan(self, guest, wanted):
        if not wanted:
            return DistroPlan(self.what(wanted), reason="no kernel argument to add")
        text = guest.read_text(self.FILE) or ""
        new, add = edit_default_grub(text, wanted)
        if not add:
            return DistroPlan(self.what(wanted), reason=f"{self.FILE} has them")
        edit = append_args(self.FILE, text, add) or line_edit(self.FILE, "GRUB_CMDLINE_LINUX",
                                                              re.search(r"^GRUB_CMDLINE_LINUX=.*$", new, re.M).group(0), text)
        new = edit[1]
        commands = [f"cp {self.FILE} {self.BACKUP}", edit[0], self.mkconfig]
        return DistroPlan(self.what(wanted),
                          [Edit(f"add {' '.join(add)} to GRUB_CMDLINE_LINUX in {self.FILE}, then {self.mkconfig}",
                                commands, diff(self.FILE, text, new))],
                          data={"add": add, "new": new})

    def apply(self, guest, plan):
        if not plan.changes:
            return no_change(plan.what, plan.reason)
        run_plan(guest, plan)
        return did(plan.what, f"added {' '.join(plan.data['add'])} to GRUB_CMDLINE_LINUX, then {self.mkconfig}")

    def plan_default_kernel(self, guest, release):
        what = f"default kernel {release} ({self.name})"
        cfg = next((t for p in GRUB_CFGS if (t := guest.read_text(p))), "")
        entry = grub_entry_id(cfg, release)
        if entry is None:
            raise RunbookError(f"{guest.name}: no GRUB menu entry for {release} in {' or '.join(GRUB_CFGS)}",
                               hint=f"run {self.mkconfig} in {guest.name}, then rerun stage 03")
        text = guest.read_text(self.FILE) or ""
        if set_grub_default(text, entry) == text:
            return DistroPlan(what, reason=f'GRUB_DEFAULT="{entry}" in {self.FILE} already starts {release}')
        cmd, new = line_edit(self.FILE, "GRUB_DEFAULT", f'GRUB_DEFAULT="{entry}"', text)
        return DistroPlan(what, [Edit(f'GRUB_DEFAULT="{entry}" in {self.FILE}, then {self.mkconfig}: the next boot '
                                      f"starts {release}", [cmd, self.mkconfig], diff(self.FILE, text, new))],
                          data={"said": f'GRUB_DEFAULT="{entry}", then {self.mkconfig}: the next boot starts {release}'})

    @staticmethod
    def fix(args, where):
        return (f"{where}: add '{args}' to GRUB_CMDLINE_LINUX in /etc/default/grub, "
                "run update-grub, then reboot")


class KernelInstall(Bootloader):
    """systemd-boot/BLS without grub: the command line in /etc/kernel/cmdline, then kernel-install."""

    name = "kernel-install"
    FILE = "/etc/kernel/cmdline"

    @classmethod
    def detect(cls, guest):
        return cls() if guest.exists(cls.FILE) or guest.which("kernel-install") else None

    def plan(self, guest, wanted):
        if not wanted:
            return DistroPlan(self.what(wanted), reason="no kernel argument to add")
        text = (guest.read_text(self.FILE) or guest.read_text("/proc/cmdline") or "").strip()
        add = missing_args(text, wanted)
        if not add:
            return DistroPlan(self.what(wanted), reason=f"{self.FILE} has them")
        new = " ".join(shlex.split(text) + add) + "\n"
        old = guest.read_text(self.FILE) or ""
        return DistroPlan(self.what(wanted),
                          [Edit(f"add {' '.join(add)} to {self.FILE}, then kernel-install",
                                [write_command(self.FILE, new), KERNEL_INSTALL], diff(self.FILE, old, new))],
                          data={"add": add, "new": new})

    def apply(self, guest, plan):
        if not plan.changes:
            return no_change(plan.what, plan.reason)
        run_plan(guest, plan)
        return did(plan.what, f"added {' '.join(plan.data['add'])} to {self.FILE}, then kernel-install")

    @staticmethod
    def fix(args, where):
        return f"{where}: add '{args}' to {KernelInstall.FILE}, run {KERNEL_INSTALL}, then reboot"


BOOTLOADERS: tuple[type[Bootloader], ...] = (Grubby, DefaultGrub, KernelInstall)  # in the order detect tries them


def bootloader(guest: Guest) -> Bootloader:
    """How this system takes kernel arguments: the first of BOOTLOADERS it has."""
    for cls in BOOTLOADERS:
        found = cls.detect(guest)
        if found is not None:
            return found
    raise RunbookError(f"{guest.name}: no grubby, /etc/default/grub or kernel-install found",
                       hint="add the kernel arguments with your bootloader's tool by hand, then rerun stage 03")


def boot_fix(os, args: str, where: str) -> str:
    """How to add kernel arguments by hand, from the distribution's os-release alone
    (a check knows the distribution, not the tools): grubby on the RHEL family,
    /etc/default/grub on the Debian family, the bootloader's configuration otherwise."""
    if os.like("rhel", "fedora", "centos"):
        return Grubby.fix(args, where)
    if os.like("debian", "ubuntu"):
        return DefaultGrub.fix(args, where)
    return Bootloader.fix(args, where)
