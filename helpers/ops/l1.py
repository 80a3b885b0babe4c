"""Stage 02: the files L1 needs, its domain, and waiting for it to answer."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import RunbookError
from ..guest import SSH, Agent, Guest, libvirt_agent_call
from ..libvirt_xml import (CPU, IOMMU, OS, RNG, VCPU, Channel, Controller, Disk, Domain, Features, HostdevOnRootPort,
                           Interface,
                           QemuCommandline, Serial, amd_iommu_qemu_args, nvme_qemu_args, user_net_qemu_args)
from ..params import Params
from ..state import State
from ..wait import wait_for
from . import Change

NATIVE_NVME_VERSION = 11_005_000  # libvirt 11.5: <disk> on an NVMe controller
QEMU_USER = "libvirt-qemu"


def cpu_mode(p: Params, accel: str) -> str:
    """host-passthrough under KVM (L1 sees VT-x/AMD-V), maximum under TCG (which offers SVM)."""
    if p.l1.cpu_mode != "auto":
        return p.l1.cpu_mode
    return "host-passthrough" if accel == "kvm" else "maximum"


# Under TCG, QEMU runs `rep movsb` / `rep stosb` one byte per loop turn. With ERMS or FSRM
# offered, Linux copies and zeroes with them (copy_to_user, clear_page, glibc's large
# memcpy/memset), so every page L1 zeroes or copies costs eight times the loop turns of
# the `rep movsq` / `rep stosq` it uses otherwise. Measured in the lab's L1: starting L2
# (libvirt pins L2's 256 MiB for VFIO) 7.5-9.0 s with them, 4.9 s without; reading 200 MB
# from tmpfs 0.54 s against 0.18 s. Only the emulated CPU (-cpu max) hides them: under KVM
# L1 gets the host's CPU as it is.
TCG_HIDDEN_FEATURES = ("erms", "fsrm")


def cpu_hidden(p: Params, accel: str) -> tuple[str, ...]:
    """The CPU flags L1 does not see: under TCG with QEMU's own CPU model, the fast-string ones."""
    return TCG_HIDDEN_FEATURES if accel != "kvm" and cpu_mode(p, accel) == "maximum" else ()


L1_FILES_MARGIN = 256 * 1024 ** 2  # L1's overlay grows while it runs; its console log and keys


def check_space(guest: Guest, workdir: Path, backing_file: Path | None, size_gib: float, lab: bool) -> None:
    """Refuse before anything is created when the files stage 02 makes cannot fit:
    the NVMe backing file at its full size (sparse, but mkfs and fio in L2 write to
    it) and, in the lab, room for L1's overlay and logs."""
    from ..facts.system import free_disk
    need = {}
    if backing_file is not None and not guest.exists(str(backing_file)):  # None: no backing file (a host NVMe)
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


def overlay_backing(l0: Guest, overlay: Path) -> str | None:
    """The backing file a qcow2 overlay points at (qemu-img info, on L0)."""
    r = l0.read(["qemu-img", "info", "-U", "--output=json", str(overlay)], timeout=60)
    if not r.ok:
        return None
    import json
    return json.loads(r.out).get("backing-filename")


def known_hosts_line(host: str, port: int, pubkey: str) -> str:
    """The known_hosts entry for L1: ``[host]:port type key`` (``host type key`` on port 22)."""
    key = " ".join(pubkey.split()[:2])
    return f"[{host}]:{port} {key}" if port != 22 else f"{host} {key}"


def l1_iommu(kind: str, native_amd: bool, amd=None) -> tuple[IOMMU | None, list[str]]:
    """L1's vIOMMU as a libvirt device or, for AMD, as QEMU arguments. Intel: interrupt
    remapping, caching mode and device IOTLB (the seed's). AMD: the options
    ``checks.viommu.amd_iommu_options`` chose for the QEMU that runs L1 (``amd``; None:
    those of a QEMU of unknown version); libvirt's ``<iommu model='amd'>`` (11.5) only
    when it can say all of them (it has no dma-remap)."""
    if kind == "intel":
        return IOMMU(model="intel", intremap=True, caching_mode=True, iotlb=True), []
    if kind != "amd":
        raise ValueError(f"IOMMU kind must be intel or amd, got {kind!r}")
    if amd is None:
        from ..checks.viommu import amd_iommu_options
        amd = amd_iommu_options(None, None)
    opts = amd.options
    if native_amd and set(opts) <= {"intremap", "pt"}:
        return IOMMU(model="amd", intremap=opts.get("intremap") == "on", caching_mode=None, iotlb=None,
                     passthrough={"on": True, "off": False}.get(opts.get("pt"))), []
    flag = {"on": True, "off": False}
    return None, amd_iommu_qemu_args(intremap=flag[opts["intremap"]], device_iotlb=flag.get(opts.get("device-iotlb")),
                                     pt=flag.get(opts.get("pt")), dma_remap=flag.get(opts.get("dma-remap")))


# QEMU creates its vIOMMU before any other device, and amd-iommu's own PCI function
# (AMDVI-PCI) takes the first free slot of pcie.0: 0x01, where libvirt puts its root
# ports unless they are placed. So with QEMU's amd-iommu the root ports are declared
# at slot 0x02 (one per libvirt PCI device: disk, virtio-serial, balloon, rng; two spare).
AMDVI_PCI_SLOT = 0x01
ROOT_PORT_SLOT = 0x02
ROOT_PORTS = 6


def placed_root_ports(slot: int = ROOT_PORT_SLOT, count: int = ROOT_PORTS) -> list[Controller]:
    return [Controller(type="pci", model="pcie-root-port", index=i + 1, root_slot=slot, function=i)
            for i in range(count)]


def memlock_mib(memory_mib: int, hostdevs: int, viommu: bool) -> int:
    """The locked-memory limit libvirt gives QEMU for VFIO (qemuDomainGetMemLockLimitBytes):
    all of the guest's memory plus 1 GiB for I/O space, once per VFIO device when a vIOMMU
    is present (each device's address space is pinned on its own), else once."""
    if not hostdevs:
        return 0
    return (hostdevs if viommu else 1) * memory_mib + 1024


def l1_domain(p: Params, accel: str, cpuset: str | None, disk: Path, console_log: Path,
              native_nvme: bool, iommu: str = "intel", native_amd_iommu: bool = False, amd=None,
              host_nvme_bdf: str | None = None) -> Domain:
    """The seed's L1: q35, host CPU model, pinned vCPUs, a vIOMMU (Intel, or AMD with the
    options ``amd`` carries) with interrupt remapping, split irqchip, the emulated NVMe. With
    ``nvme.source: host`` the NVMe is L0's controller at ``host_nvme_bdf`` instead, a
    managed hostdev on a root port of its own; with ``nvme.target: l1`` L1 has no vIOMMU
    (nothing goes on to L2)."""
    l1 = p.l1
    if p.nvme.host and not p.nvme.in_l2:
        viommu, qemu_args = None, []
    else:
        viommu, qemu_args = l1_iommu(iommu, native_amd_iommu, amd)  # QEMU's amd-iommu first: before the NVMe
    devices = [Disk(path=str(disk), format="qcow2" if str(disk).endswith("qcow2") else "raw",
                    target_dev="vda", bus="virtio", cache="unsafe" if p.lab else "none", discard="unmap"),
               *([viommu] if viommu else []),
               Channel(),
               Serial(log_path=str(console_log)), RNG(),
               Controller(type="usb", model="none")]  # headless: no USB for firmware and kernel to probe
    if any(a.startswith("amd-iommu") for a in qemu_args):
        devices += placed_root_ports()  # slot 0x01 stays free for AMDVI-PCI
    if p.nvme.host:
        if not host_nvme_bdf:
            raise ValueError("nvme.source host: L1's definition needs the controller's BDF on L0 (stage 01 finds it)")
        taken = [d.index for d in devices if isinstance(d, Controller) and d.index is not None]
        devices.append(HostdevOnRootPort(host_nvme_bdf, port_index=max(taken, default=0) + 1))
    elif native_nvme:
        devices.append(Disk(path=str(p.nvme.backing_file), format="raw", target_dev="nvme0n1", bus="nvme",
                            serial=p.nvme.serial))
    else:
        qemu_args += nvme_qemu_args(str(p.nvme.backing_file), p.nvme.serial, addr=p.nvme.pci_addr)
    if l1.lab_l2:  # the lab's L2 image: no network (its guest agent is the way in)
        pass
    elif l1.network.mode == "user":
        qemu_args += user_net_qemu_args(l1.network.ssh_port)
    else:
        devices += [Interface(type="bridge", source_bridge=l1.network.bridge, model="virtio",
                              driver_name="vhost", queues=l1.network.queues) for _ in range(l1.network.nics)]
    return Domain(
        name=l1.name, type="kvm" if accel == "kvm" else "qemu", memory_mib=l1.memory_mib,
        vcpu=VCPU(count=l1.vcpus, cpuset=cpuset),
        os=lab_l2_os() if l1.lab_l2 else OS(machine="q35"),
        cpu=CPU(mode=cpu_mode(p, accel), sockets=l1.sockets, cores=l1.cores, threads=l1.threads,
                disabled=cpu_hidden(p, accel)),
        features=Features(acpi=True, apic=True, ioapic_driver="qemu", kvm_hidden=accel == "kvm"),
        devices=devices,
        qemu_args=QemuCommandline(args=qemu_args) if qemu_args else None,
        description="L1 of the nested NVMe runbook")


def lab_l2_os() -> OS:
    """``l1.image: lab-l2``: the lab's L2 kernel and initrd, booted directly, as stage 04 boots L2."""
    from ..lab import sources as lab_layout
    return OS(machine="q35", kernel=lab_layout.L2_KERNEL_IN_L1, initrd=lab_layout.L2_INITRD_IN_L1,
              cmdline=lab_layout.L2_CMDLINE)


def l1_agent(lv, name: str) -> Agent:
    """L1's guest agent through L0's libvirt (the domain looked up again at each call)."""
    return Agent(call=libvirt_agent_call(lambda: lv.domain(name)), name=name)


def wait_for_agent(lv, name: str, timeout: float, log: Path) -> float:
    """Wait until L1's guest agent answers; return the seconds it took."""
    t0 = time.monotonic()
    agent = l1_agent(lv, name)

    def answered() -> bool:
        if agent.ping(timeout=3):
            return True
        if not lv.is_active(name):  # QEMU ended (crashed, or destroyed): no point waiting on
            raise RunbookError(f"L1 ({name}) stopped while it was booting, after {time.monotonic() - t0:.0f} s: "
                               f"its QEMU process ended (read /var/log/libvirt/qemu/{name}.log on L0 for why, "
                               f"and its console log {log})",
                               hint="run stage 02 again (`python -m helpers run --from 02`): it starts L1 anew")
        return False
    wait_for(answered, f"{name}: guest agent", timeout, interval=0.5, log=log,
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

    wait_for(ready, f"{guest.name}: SSH on {guest.host}:{guest.port}", timeout, interval=0.5, log=log,
             note=lambda: last["err"][:60],
             hint=f"read {log}; check the forwarded port and that the key and known_hosts match (last error: {last['err']})")
    return time.monotonic() - t0, last["repaired"]
