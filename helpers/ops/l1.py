"""Stage 02: the files L1 needs, its domain, and waiting for it to answer."""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from ..errors import RunbookError
from ..guest import SSH, Agent, Guest, libvirt_agent_call
from ..libvirt_xml import (CPU, IOMMU, OS, RNG, VCPU, Channel, Controller, Disk, Domain, Features, Interface,
                           QemuCommandline, Serial, nvme_qemu_args, user_net_qemu_args)
from ..params import Params
from ..state import State
from ..wait import wait_for
from . import Change, did, no_change

NATIVE_NVME_VERSION = 11_005_000  # libvirt 11.5: <disk> on an NVMe controller
QEMU_USER = "libvirt-qemu"


def cpu_mode(p: Params, accel: str) -> str:
    """host-passthrough under KVM (L1 sees VT-x/AMD-V), maximum under TCG (which offers SVM)."""
    if p.l1.cpu_mode != "auto":
        return p.l1.cpu_mode
    return "host-passthrough" if accel == "kvm" else "maximum"


def _give_to_qemu(l0: Guest, path: Path) -> None:
    """libvirt does not relabel files named only in <qemu:commandline>: let QEMU's user
    use it, and make each folder above traversable (on L0, through its command interface)."""
    q = shlex.quote(str(path))
    l0.run(f"if id -u {QEMU_USER} >/dev/null 2>&1; then chown {QEMU_USER}:{QEMU_USER} {q}; fi; "
           f"d=$(dirname {q}); while [ \"$d\" != / ]; do case $(stat -c %A \"$d\") in *[xt]) ;; "
           f"*) chmod o+x \"$d\";; esac; d=$(dirname \"$d\"); done", check=True)


L1_FILES_MARGIN = 256 * 1024 ** 2  # L1's overlay grows while it runs; its console log and keys


def check_space(guest: Guest, workdir: Path, backing_file: Path, size_gib: float, lab: bool) -> None:
    """Refuse before anything is created when the files stage 02 makes cannot fit:
    the NVMe backing file at its full size (sparse, but mkfs and fio in L2 write to
    it) and, in the lab, room for L1's overlay and logs."""
    from ..facts.system import free_disk
    need = {}
    if not guest.exists(str(backing_file)):
        need[str(backing_file)] = int(size_gib * 1024 ** 3)
    if lab:
        need[str(workdir)] = need.get(str(workdir), 0) + L1_FILES_MARGIN
    by_fs: dict[str, tuple[int, int, list[str]]] = {}
    for path, size in need.items():
        d = free_disk(guest, path)
        if d.avail_bytes is None:
            continue
        have, total, what = by_fs.get(d.mount, (d.avail_bytes, 0, []))
        by_fs[d.mount] = (have, total + size, what + [path])
    for mount, (have, total, what) in by_fs.items():
        if total > have:
            raise RunbookError(
                f"not enough free space on the filesystem at {mount} for {', '.join(what)}: "
                f"{have / 1024 ** 2:.0f} MiB free, {total / 1024 ** 2:.0f} MiB needed "
                f"(the NVMe backing file at its full {size_gib:g} GiB" + (", L1's overlay and logs" if lab else "") + ")",
                hint=f"free space on {mount}, lower nvme.size_gib, or put host.workdir and nvme.backing_file "
                     "on a filesystem with room; nothing was created")


def no_space(l0: Guest, path: Path, said: str) -> RunbookError:
    """A write that failed (the filesystem full, ...): remove the half-made file and say which filesystem."""
    from ..facts.system import free_disk
    l0.run(["rm", "-f", str(path)])
    mount = free_disk(l0, str(path)).mount or "?"
    why = "the filesystem is full" if "no space left" in said.lower() else said.strip().splitlines()[-1] if said.strip() else "failed"
    return RunbookError(f"could not write {path}: {why} (filesystem at {mount}); the half-made file was removed",
                        hint=f"free space on {mount} or point the parameters at a filesystem with room, then rerun")


def ensure_workdir(l0: Guest, workdir: Path, state: State) -> Change:
    """The folder for the run's files on L0, traversable by QEMU's user."""
    if l0.is_dir(str(workdir)):
        return no_change(f"workdir {workdir}", "exists")
    l0.mkdir(str(workdir), 0o755)
    state.remember_created("dirs", str(workdir))
    return did(f"workdir {workdir}", "created")


def ensure_backing_file(l0: Guest, path: Path, size_gib: float, state: State) -> Change:
    """The NVMe's raw backing file on L0: created sparse at the size asked, never overwritten."""
    size = int(size_gib * 1024 ** 3)
    have = l0.size(str(path))
    if have is not None:
        _give_to_qemu(l0, path)
        note = "" if have == size else f" (its size is {have / 1024 ** 3:.2f} GiB, not the {size_gib} GiB asked; left as it is)"
        return no_change(f"NVMe backing file {path}", "exists, kept" + note)
    q = shlex.quote(str(path))
    r = l0.run(f"mkdir -p {shlex.quote(str(path.parent))} && truncate -s {size} {q}", timeout=120)
    if not r.ok:
        raise no_space(l0, path, r.err or r.out) from None
    _give_to_qemu(l0, path)
    state.remember_created("files", str(path))
    return did(f"NVMe backing file {path}", f"created raw, sparse, {size_gib} GiB")


def overlay_backing(l0: Guest, overlay: Path) -> str | None:
    """The backing file a qcow2 overlay points at (qemu-img info, on L0)."""
    r = l0.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], timeout=60)
    if not r.ok:
        return None
    import json
    return json.loads(r.out).get("backing-filename")


def ensure_overlay(l0: Guest, golden: Path, overlay: Path, state: State, running: bool = False) -> Change:
    """L1's system disk in the lab: a qcow2 overlay on the cached golden image.
    An overlay on an older image (the recipe changed) is made anew unless L1 runs on it."""
    what = f"L1 disk {overlay}"
    if l0.exists(str(overlay)):
        backing = overlay_backing(l0, overlay)
        if backing == str(golden):
            return no_change(what, f"overlay on {golden.name} exists")
        if running:
            return no_change(what, f"L1 runs on an older image ({backing}); teardown and rerun to use the new one")
        l0.remove(str(overlay))
    r = l0.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(golden), str(overlay)], timeout=120)
    if not r.ok:
        if "No space left" in r.err:
            raise no_space(l0, overlay, "No space left on device")
        raise RunbookError(f"qemu-img could not create {overlay}: {r.err.strip()}",
                           hint="check free space and that qemu-utils is installed")
    state.remember_created("files", str(overlay))
    return did(what, f"qcow2 overlay on {golden}")


def known_hosts_line(host: str, port: int, pubkey: str) -> str:
    """The known_hosts entry for L1: ``[host]:port type key`` (``host type key`` on port 22)."""
    key = " ".join(pubkey.split()[:2])
    return f"[{host}]:{port} {key}" if port != 22 else f"{host} {key}"


def write_known_hosts(machine: Guest, path: Path, host: str, port: int, pubkey: str, state: State | None) -> Change:
    """Pin L1's host key (the one baked into the lab image) in ``path`` on ``machine``."""
    key = " ".join(pubkey.split()[:2])
    line = known_hosts_line(host, port, pubkey) + "\n"
    if machine.read_text(str(path)) == line:
        return no_change(f"known_hosts {path}", "pins L1's host key already")
    machine.write_text(str(path), line, 0o644)
    if state is not None:
        state.remember_created("files", str(path))
    return did(f"known_hosts {path}", f"pins {key[:40]}...")


def copy_key(l0: Guest, key: Path, dest: Path, state: State) -> Change:
    """The run keeps its own copy of the lab's SSH key on L0 (mode 0600), so a rebuilt
    image cache never locks the runbook out of a running L1."""
    s, d = shlex.quote(str(key)), shlex.quote(str(dest))
    if l0.run(f"cmp -s {s} {d}").ok:
        return no_change(f"SSH key {dest}", "the lab key is in place")
    l0.run(f"t=$(mktemp {d}.XXXXXX) && cat {s} > \"$t\" && chmod 600 \"$t\" && mv -f \"$t\" {d}", check=True)
    state.remember_created("files", str(dest))
    return did(f"SSH key {dest}", f"copied from {key.parent}")


def fetch_key(l0: Guest, key: Path, dest: Path) -> Change:
    """A remote L0: this machine's copy of the lab's SSH key into L1 (mode 0600, in a
    0700 folder), read from L0 through its command interface; the ssh client runs here."""
    text = l0.read_text(str(key))
    if text is None:
        raise RunbookError(f"cannot read the lab's SSH key {key} on L0",
                           hint="rebuild the lab images (stage 02 does), then rerun stage 02")
    if dest.exists() and dest.read_text() == text:
        return no_change(f"SSH key {dest} (this machine)", "the lab key is in place")
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    dest.chmod(0o600)
    return did(f"SSH key {dest} (this machine)", f"read from {key} on L0")


def l1_domain(p: Params, accel: str, cpuset: str | None, disk: Path, console_log: Path,
              native_nvme: bool) -> Domain:
    """The seed's L1: q35, host CPU model, pinned vCPUs, Intel vIOMMU with
    interrupt remapping and device IOTLB, split irqchip, the emulated NVMe."""
    l1 = p.l1
    devices = [Disk(path=str(disk), format="qcow2" if str(disk).endswith("qcow2") else "raw",
                    target_dev="vda", bus="virtio", cache="unsafe" if p.lab else "none"),
               IOMMU(model="intel", intremap=True, caching_mode=True, iotlb=True),
               Channel(),
               Serial(log_path=str(console_log)), RNG(),
               Controller(type="usb", model="none")]  # headless: no USB for firmware and kernel to probe
    qemu_args: list[str] = []
    if native_nvme:
        devices.append(Disk(path=str(p.nvme.backing_file), format="raw", target_dev="nvme0n1", bus="nvme",
                            serial=p.nvme.serial))
    else:
        qemu_args += nvme_qemu_args(str(p.nvme.backing_file), p.nvme.serial, addr=p.nvme.pci_addr)
    if l1.network.mode == "user":
        qemu_args += user_net_qemu_args(l1.network.ssh_port)
    else:
        devices.append(Interface(type="bridge", source_bridge=l1.network.bridge, model="virtio",
                                 driver_name="vhost", queues=l1.network.queues))
    return Domain(
        name=l1.name, type="kvm" if accel == "kvm" else "qemu", memory_mib=l1.memory_mib,
        vcpu=VCPU(count=l1.vcpus, cpuset=cpuset),
        os=OS(machine="q35"),
        cpu=CPU(mode=cpu_mode(p, accel), sockets=l1.sockets, cores=l1.cores, threads=l1.threads),
        features=Features(acpi=True, apic=True, ioapic_driver="qemu", kvm_hidden=accel == "kvm"),
        devices=devices,
        qemu_args=QemuCommandline(args=qemu_args) if qemu_args else None,
        description="L1 of the nested NVMe runbook")


def l1_agent(lv, name: str) -> Agent:
    """L1's guest agent through L0's libvirt (the domain looked up again at each call)."""
    return Agent(call=libvirt_agent_call(lambda: lv.domain(name)), name=name)


def wait_for_agent(lv, name: str, timeout: float, log: Path) -> float:
    """Wait until L1's guest agent answers; return the seconds it took."""
    t0 = time.monotonic()
    agent = l1_agent(lv, name)
    wait_for(lambda: agent.ping(timeout=3), f"{name}: guest agent", timeout, interval=1, log=log,
             hint=f"L1 did not finish booting: read {log}")
    return time.monotonic() - t0


# The SSH server's unit, and whether it runs: "ssh active", "sshd inactive", "none unknown"
SSHD_STATE = ("for u in ssh sshd; do if systemctl cat $u.service >/dev/null 2>&1; then "
              "echo $u $(systemctl is-active $u.service); exit 0; fi; done; echo none unknown")
SSHD_GRACE_S = 15  # sshd starts a little after the guest agent at boot: leave it that long


def sshd_stopped(agent: Agent) -> str | None:
    """The SSH server unit when the guest agent says it is stopped (inactive or failed)."""
    try:
        unit, _, state = agent.run(SSHD_STATE, timeout=30).out.strip().partition(" ")
    except Exception:  # the agent does not answer: nothing to say here
        return None
    return unit if unit != "none" and state in ("inactive", "failed") else None


def wait_for_ssh(guest: SSH, timeout: float, log: Path, agent: Agent | None = None) -> tuple[float, str | None]:
    """Wait until L1's sshd lets us in; return the seconds it took and what was
    repaired: with ``agent``, an sshd found stopped (once the boot's grace is over)
    is started through the guest agent."""
    t0 = time.monotonic()
    last = {"err": "", "repaired": None}

    def ready():
        r = guest.run("true", timeout=20)
        last["err"] = r.err.strip().splitlines()[-1] if r.err.strip() else ""
        if "host key verification failed" in r.err.lower() or "identification has changed" in r.err.lower():
            raise RunbookError(f"{guest.name}'s SSH host key does not match {guest.known_hosts}",
                               hint="the lab pins the key of the image it built: rebuild L1 (teardown, then run stage 02)")
        if not r.ok and agent and last["repaired"] is None and time.monotonic() - t0 > SSHD_GRACE_S:
            unit = sshd_stopped(agent)
            if unit:
                agent.run(f"systemctl start {unit}.service", timeout=60)
                last["repaired"] = f"started {unit}.service in L1 through the guest agent (it was stopped)"
        return r.ok

    wait_for(ready, f"{guest.name}: SSH on {guest.host}:{guest.port}", timeout, interval=1, log=log,
             note=lambda: last["err"][:60],
             hint=f"read {log}; check the forwarded port and that the key and known_hosts match (last error: {last['err']})")
    return time.monotonic() - t0, last["repaired"]
