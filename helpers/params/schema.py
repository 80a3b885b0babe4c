"""The parameters' schema: one section a class (host, l1, nvme, l2, verify, bench,
teardown), each key with its type, default, limits and meaning, and the settings that
contradict each other (``conflicts``; ``lab_conflicts`` for a whole file)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fields import (BDF_RE, CPUSET_RE, LAB_L2_IMAGE, MAX_CPU, SYSTEM_DIRS, F, check_domain_name, check_file_path,
                     check_guest_path, check_workdir, kernel_tree)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HostSSH(Section):
    """L0 reached over SSH from the machine that runs the runbook (a workstation):
    keys only, host key checked. Either ``address`` (with user, port, identity,
    known_hosts) or ``config_host``, an entry of your own ssh config. Only paths
    to key files, never a key."""

    address: Optional[str] = F(None, "L0's address or host name", example="server1.example.com")
    user: str = F("root", "the user the runbook logs in as on L0 (it needs root rights: libvirt, files)")
    port: int = F(22, "L0's SSH port", ge=1, le=65535)
    identity: Optional[Path] = F(None, "the path of your private key for L0, on this machine (never the key "
                                 "itself); empty: ssh's defaults", example="/root/.ssh/id_ed25519")
    known_hosts: Optional[Path] = F(None, "a known_hosts file on this machine that holds L0's host key; empty: "
                                    "ssh's default (~/.ssh/known_hosts)", example="/root/.ssh/known_hosts")
    config_host: Optional[str] = F(None, "instead of address, user, port, identity and known_hosts: a Host entry "
                                   "of your own ssh config (~/.ssh/config)", example="lab-server")
    libvirt_uri: Optional[str] = F(None, "the URI this machine opens to reach L0's libvirt; empty: "
                                   "qemu+ssh://user@address:port/system made from the keys above",
                                   example="qemu+ssh://root@server1.example.com/system")

    @field_validator("identity", "known_hosts")
    @classmethod
    def _file(cls, v, info):
        return check_file_path(v, f"/root/.ssh/{'id_ed25519' if info.field_name == 'identity' else info.field_name}")

    @field_validator("address", "config_host")
    @classmethod
    def _name(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.:\[\]%-]{1,253}", v):
            raise ValueError(f"`{v}` is not a host name or address: letters, digits, '.', '-', ':' "
                             "(e.g. 192.168.9.10 or server1.example.com)")
        return v

    @model_validator(mode="after")
    def _one_way(self):
        if bool(self.address) == bool(self.config_host):
            raise ValueError("give either `address` (with user, port, identity, known_hosts) or `config_host` "
                             "(an entry of your ssh config), not both and not neither")
        if self.config_host and (self.identity or self.known_hosts or self.port != 22 or self.user != "root"):
            raise ValueError("with `config_host` the ssh config entry says user, port, identity and known_hosts: "
                             "remove them here, or use `address` instead")
        return self


class Host(Section):
    """L0, the machine that runs L1: this machine, or a server over SSH (``ssh``)."""

    ssh: Optional[HostSSH] = F(None, "reach L0 over SSH (below); empty: L0 is this machine")
    libvirt_uri: str = F("qemu:///system", "libvirt connection URI on L0, as `virsh -c` takes it on L0")
    accel: Literal["auto", "kvm", "tcg"] = F(
        "auto", "how L1 runs: kvm, tcg (QEMU's emulation), or auto (KVM only when a smoke boot shows it works)")
    require_iommu: bool = F(True, "stage 01 fails when L0 has no active IOMMU (VT-d/AMD-Vi)")
    workdir: Path = F(Path("/var/lib/nested-nvme"),
                      "a folder of the runbook's own on L0 for logs, consoles and overlays (created if missing; "
                      "teardown removes what the runbook made there, so never / or a system folder)",
                      example="/var/lib/nested-nvme")
    kvm_smoke_timeout_s: int = F(20, "seconds the KVM smoke boot may take", ge=5, le=600)
    accept_tcg_stall_risk: bool = F(
        False, "run L1 with several vCPUs under TCG on a QEMU older than 8.1 anyway (its multi-threaded TCG race "
               "stalls L1 once KVM runs in it); stage 01 refuses that unless this is true",
        consent="stage 01 passes with a warning instead of failing on a QEMU older than 8.1 under TCG")

    _workdir = field_validator("workdir")(classmethod(lambda cls, v: check_workdir(v)))


class Network(Section):
    """How L1 is reached: 'user' (QEMU user-mode networking, SSH forwarded to
    a port on 127.0.0.1) or 'bridge' (a host bridge; SSH to ``address``)."""

    mode: Literal["user", "bridge"] = F("user", "user: SSH forwarded from 127.0.0.1:ssh_port; bridge: L1 on a host bridge")
    ssh_port: int = F(2222, "mode user: the port on 127.0.0.1 forwarded to L1's sshd (must be free on L0)",
                      ge=1, le=65535)
    bridge: Optional[str] = F(None, "mode bridge: the host bridge L1 joins", example="bridge0")
    address: Optional[str] = F(None, "mode bridge: L1's address on the bridge, for SSH", example="192.168.9.131")
    queues: int = F(1, "virtio-net queues (mode bridge)", ge=1, le=64)
    nics: int = F(1, "mode bridge: how many virtio NICs L1 gets on the bridge (the seed: 2, bonded in L1)",
                  ge=1, le=8)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", v):
            raise ValueError(f"`{v}` is not a network interface name: at most 15 letters, digits, '-', '_' "
                             "or '.', e.g. bridge0")
        return v

    @model_validator(mode="after")
    def _bridge_needs_name(self):
        if self.mode == "bridge" and not (self.bridge and self.address):
            raise ValueError("mode 'bridge' needs 'bridge' (e.g. bridge0) and 'address' (L1's SSH address)")
        return self


class SSHAccess(Section):
    """SSH into L1: keys only, host key checked. In the lab both are made by
    the image build; on a real host give your key and known_hosts file."""

    user: str = F("root", "the user the runbook logs in as in L1 (it needs root rights)")
    identity: Optional[Path] = F(None, "the path of your private key, authorized in L1 (never the key itself); "
                                 "empty in the lab (it makes its own)", example="/root/.ssh/id_ed25519")
    known_hosts: Optional[Path] = F(None, "a known_hosts file with L1's host key; empty in the lab",
                                    example="/root/.ssh/known_hosts")
    config: Optional[Path] = F(None, "an ssh config file to use for L1 (optional)", example="/root/.ssh/config")

    @field_validator("identity", "known_hosts", "config")
    @classmethod
    def _file(cls, v, info):
        return check_file_path(v, f"/root/.ssh/{'id_ed25519' if info.field_name == 'identity' else info.field_name}")


class HostNVMeSelect(Section):
    """With ``nvme.source: host``: which NVMe controller of L0 goes to L1. It must name
    the device (serial or bdf): the only NVMe of a host may be its system disk, so it
    is never taken by default. ``model`` only narrows a selection by serial or bdf."""

    serial: Optional[str] = F(None, "the controller's serial number, as `nvme list` on L0 shows it",
                              example="S4EVNF0M123456")
    bdf: Optional[str] = F(None, "the controller's PCI address on L0, as `lspci -D` shows it", example="0000:5e:00.0")
    model: Optional[str] = F(None, "with serial or bdf: the model must contain this text",
                             example="Samsung SSD 980 PRO")

    @field_validator("bdf")
    @classmethod
    def _bdf(cls, v):
        if v is not None and not BDF_RE.match(v):
            raise ValueError("expected a PCI address DDDD:BB:DD.F, e.g. 0000:5e:00.0")
        return v.lower() if v else v


EMULATED_ONLY = ("backing_file", "size_gib", "serial", "pci_addr", "remove_backing_file")


class NVMe(Section):
    """The NVMe passed through: the drive QEMU emulates for L1 (``source: emulated``, the
    seed's and the lab's), or a real NVMe controller of L0 (``source: host``), which ends
    in L1 (``target: l1``) or goes on through L1's vIOMMU to L2 (``target: l2``)."""

    source: Literal["emulated", "host"] = F(
        "emulated", "emulated: QEMU on L0 emulates an NVMe for L1 (the seed, the lab); host: an NVMe controller "
                    "of L0 goes to L1 by VFIO (nvme.select names it)")
    target: Literal["l2", "l1"] = F(
        "l2", "where the NVMe ends: l2 (the seed's chain: through L1's vIOMMU to L2) or l1 (source host only: "
              "L1 keeps it; no vIOMMU, nothing for stages 03 and 04)")
    backing_file: Path = F(Path("/var/lib/nested-nvme/nvme.raw"),
                           "source emulated: the raw file on L0 behind L1's emulated NVMe (created sparse by stage 02)",
                           example="/var/lib/nested-nvme/nvme.raw")
    size_gib: float = F(1, "source emulated: the NVMe's size in GiB (the file is sparse; L0 must have room for it)",
                        gt=0, le=65536)
    serial: str = F("1234", "source emulated: the NVMe's serial number; l2.select.serial picks the NVMe by it",
                    min_length=1, max_length=20)
    pci_addr: str = F("0x10", "source emulated: the NVMe's PCI slot on L1's root bus", pattern=r"^0x[0-1][0-9a-fA-F]$")
    remove_backing_file: bool = F(False, "source emulated: teardown deletes the backing file",
                                  consent="teardown (stage 99) deletes nvme.backing_file and the data in it")
    select: HostNVMeSelect = F(HostNVMeSelect(), "source host: which NVMe controller of L0 (below)")
    baseline_consent: bool = F(
        False, "source host: fio may write to L0's NVMe before it goes to L1 (a baseline; read-only profiles "
               "need no consent)",
        consent="stage 05 runs the writing fio profiles on L0's NVMe (source host) before passthrough, "
                "destroying what is on it")

    @field_validator("backing_file")
    @classmethod
    def _file(cls, v):
        return check_file_path(v, "/var/lib/nested-nvme/nvme.raw")

    @property
    def host(self) -> bool:
        """Is the NVMe a controller of L0 (source host)?"""
        return self.source == "host"

    @property
    def in_l2(self) -> bool:
        """Does the NVMe end in L2 (stages 03 and 04 pass it on)?"""
        return self.target == "l2"

    def problems(self) -> list[tuple[str, str]]:
        """What contradicts the source and target chosen: (key, what to change)."""
        out = []
        if self.source == "emulated":
            if self.target == "l1":
                out.append(("nvme.target", "`l1` with source `emulated` passes nothing through (QEMU would only "
                                           "emulate the drive for L1): use target l2, or source host with "
                                           "nvme.select naming a controller of L0"))
            for key in ("serial", "bdf", "model"):
                if getattr(self.select, key):
                    out.append((f"nvme.select.{key}", "selects a controller of L0, which only source `host` uses: "
                                                      "set nvme.source: host, or remove nvme.select (the emulated "
                                                      "drive is picked in L1 by l2.select)"))
            if self.baseline_consent:
                out.append(("nvme.baseline_consent", "is for a controller of L0 (source host); the emulated drive's "
                                                     "baseline in L1 is l2.baseline_consent"))
            return out
        for key in EMULATED_ONLY:
            if key in self.model_fields_set:
                out.append((f"nvme.{key}", "only the emulated drive (source `emulated`) uses it: with "
                                           "source `host` the NVMe is a real controller of L0, named by "
                                           "nvme.select, with its own size and serial; remove this key"))
        if not (self.select.serial or self.select.bdf):
            out.append(("nvme.select", "with source `host` name the controller by serial or bdf (`nvme list` and "
                                       "`lspci -D` on L0 show them): the only NVMe of a host may be its system "
                                       "disk, so it is never taken by default"
                                       + ("; model only narrows a selection" if self.select.model else "")))
        return out


class L1(Section):
    """The L1 guest, built by stage 02 and configured by stage 03."""

    name: str = F("nested-kvm", "L1's libvirt domain name on L0", pattern=r"^[A-Za-z0-9_.+-]+$")
    image: str = F("lab", "`lab` (with lab: true: the lab builds it), `lab-l2` (with lab: true and L0 the lab's "
                   "own L1: the lab's L2 image that L1 carries, booted directly, reached by its guest agent) "
                   "or the absolute path of your L1 disk image on L0 (qcow2)", example="/kvm/nested/img-nested.qcow2")
    sockets: int = F(1, "L1's CPU sockets", ge=1, le=16)
    cores: int = F(2, "cores per socket", ge=1, le=256)
    threads: int = F(1, "threads per core", ge=1, le=8)
    cpuset: Optional[str] = F(None, "L0 CPUs L1's vCPUs are pinned to; empty: the runbook picks CPUs of one NUMA node",
                              example="16-23,40-47")
    memory_mib: int = F(2048, "L1's memory in MiB", ge=512)
    cpu_mode: Literal["auto", "host-passthrough", "host-model", "maximum"] = F(
        "auto", "L1's CPU model; auto: host-passthrough under KVM, maximum under TCG")
    network: Network = F(Network(), "how L1 is reached (below)")
    ssh: SSHAccess = F(SSHAccess(), "SSH into L1 (below)")
    iommu: Literal["auto", "intel", "amd"] = F(
        "auto", "L1's vIOMMU, decided once in stage 02: intel (intel-iommu; intel_iommu=on in L1) or amd "
                "(amd-iommu with the options L0's QEMU needs, e.g. pt=off on 9.2 to 10.0.2, dma-remap=on from "
                "10.2; a kernel with CONFIG_AMD_IOMMU in L1); auto: intel on every host, Intel or AMD (QEMU's "
                "intel-iommu is fully emulated, the most used and tested one)")
    iommu_pt: bool = F(True, "also set iommu=pt in L1")
    virt_packages: list[str] = F(["libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-utils"],
                                 "packages stage 03 installs in L1 to run L2")
    replace: bool = F(False, "an existing L1 whose definition differs may be redefined",
                      consent="stage 02 may undefine and redefine an existing domain of this name whose "
                              "definition differs")
    boot_timeout_s: int = F(600, "seconds L1 may take to boot", ge=10)

    _name = field_validator("name")(classmethod(lambda cls, v: check_domain_name(v)))

    @field_validator("image")
    @classmethod
    def _image(cls, v):
        return v if v in ("lab", LAB_L2_IMAGE) else str(check_file_path(v, "/var/lib/libvirt/images/l1.qcow2"))

    @field_validator("cpuset")
    @classmethod
    def _cpuset(cls, v):
        if v is None:
            return v
        if not CPUSET_RE.match(v):
            raise ValueError("expected a cpuset like '16-23,40-47'")
        for part in v.split(","):
            lo, _, hi = part.partition("-")
            if max(int(lo), int(hi or lo)) > MAX_CPU:
                raise ValueError(f"CPU {max(int(lo), int(hi or lo))} is beyond any host's (Linux numbers CPUs "
                                 f"0-{MAX_CPU}): give CPUs of this host, or leave l1.cpuset empty")
            if hi and int(hi) < int(lo):
                raise ValueError(f"`{part}` runs backwards: write the lower CPU first, `{hi}-{lo}`")
        return v

    @property
    def lab_l2(self) -> bool:
        """Is L1 the lab's L2 image, booted in the lab's own L1 as L0 (``image: lab-l2``)?"""
        return self.image == LAB_L2_IMAGE

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


class Select(Section):
    """Which NVMe in L1 to pass through, when there are several."""

    serial: Optional[str] = F(None, "pick the NVMe with this serial (it must be nvme.serial)", example="1234")
    bdf: Optional[str] = F(None, "pick the NVMe at this PCI address in L1", example="0000:00:10.0")
    model: Optional[str] = F(None, "pick the NVMe whose model contains this text", example="QEMU NVMe Ctrl")

    @field_validator("bdf")
    @classmethod
    def _bdf(cls, v):
        if v is not None and not BDF_RE.match(v):
            raise ValueError("expected a PCI address DDDD:BB:DD.F, e.g. 0000:00:02.0")
        return v.lower() if v else v


class L2(Section):
    """The L2 guest, inside L1, that gets the NVMe by VFIO."""

    name: str = F("nvmetest", "L2's libvirt domain name in L1", pattern=r"^[A-Za-z0-9_.+-]+$")
    image: str = F("lab", "`lab` (with lab: true) or the absolute path of L2's disk image inside L1",
                   example="/root/nvmetest.qcow2")
    vcpus: int = F(1, "L2's vCPUs", ge=1, le=64)
    memory_mib: int = F(512, "L2's memory in MiB (less than L1's; VFIO pins all of it)", ge=128)
    accel: Literal["auto", "kvm", "tcg"] = F("auto", "how L2 runs in L1; auto: kvm when nested KVM passes a smoke test")
    select: Select = F(Select(), "which NVMe in L1 goes to L2 (below)")
    replace: bool = F(False, "an existing L2 whose definition differs may be redefined",
                      consent="stage 04 may undefine and redefine an existing L2 of this name in L1")
    boot_timeout_s: int = F(300, "seconds L2 may take to boot", ge=10)
    baseline_consent: bool = F(False, "fio's write profiles may write to L1's NVMe before passthrough (the read "
                               "profiles of the L1 baseline need no consent)",
                               consent="stage 04 runs fio's write profiles on the NVMe in L1 before it goes to L2")

    _name = field_validator("name")(classmethod(lambda cls, v: check_domain_name(v)))

    @field_validator("image")
    @classmethod
    def _image(cls, v):
        return v if v == "lab" else check_guest_path(v, "in L1", "/root/nvmetest.qcow2")


class Verify(Section):
    """Stage 05's checks in L2."""

    mkfs: bool = F(False, "make an XFS filesystem on the NVMe in L2 (and, before it, run fio's write profiles "
                   "on the raw namespace)",
                   consent="stage 05 runs fio's write profiles on the passed-through namespace, then mkfs.xfs on it, "
                           "destroying what is on it")
    force_wipe: bool = F(False, "mkfs even over an existing filesystem signature",
                         consent="with verify.mkfs, mkfs.xfs -f even when the NVMe already holds a filesystem")
    mount_point: str = F("/data", "where the NVMe is mounted in L2 (absolute, not / nor a system folder)",
                         example="/data")

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, v):
        v = check_guest_path(v, "in L2", "/data")
        if v == "/":
            raise ValueError("/ is L2's root filesystem: give a folder of its own for the NVMe, e.g. /data")
        if v in SYSTEM_DIRS or kernel_tree(v):
            raise ValueError(f"{v} is a system folder of L2 and mounting the NVMe there would hide it: "
                             "give a folder of its own, e.g. /data")
        return v


class Bench(Section):
    """fio on each layer."""

    profiles: list[Literal["randread-4k", "seqread-128k", "randwrite-4k", "seqwrite-128k"]] = F(
        ["randread-4k", "seqread-128k", "randwrite-4k"], "fio profiles to run, in order")
    runtime_s: float = F(5, "seconds per profile and repeat (0.5 is 500 ms)", ge=0.1, le=3600)
    size_mib: int = F(64, "the region of the namespace (and of the virtio-blk disk) fio uses: its first N MiB",
                      ge=1)
    repeats: int = F(5, "runs of each profile: a comparison says faster or slower only when every repeat of "
                     "one side beat every repeat of the other (5 and 5: 1 chance in 126 for two equal sides)",
                     ge=1, le=20)
    on_l0: bool = F(False, "also run fio on L0, on the emulated drive's backing file (nvme.backing_file), the "
                    "namespace's bytes as L0 sees them (read profiles; write profiles with bench.l0_write_consent)")
    l0_write_consent: bool = F(False, "fio's write profiles may write to nvme.backing_file on L0",
                               consent="stage 05 runs fio's write profiles on nvme.backing_file on L0, "
                                       "destroying what the namespace holds there (before mkfs.xfs in L2)")
    emulated: bool = F(True, "also measure, in the same L2, a virtio-blk disk L1's QEMU emulates (a raw file "
                       "in L1 of nvme.size_gib, made in stage 04, removed in stage 99): passthrough vs emulated")


class Teardown(Section):
    """What stage 99 may remove."""

    l1: bool = F(True, "stage 99 removes L1", consent="stage 99 stops and undefines L1 and removes the files "
                 "the runbook made for it")
    l2: bool = F(True, "stage 99 removes L2", consent="stage 99 stops and undefines L2 in L1")


class Params(Section):
    """Every stage's parameters."""

    name: str = F("lab", "a name for this parameter set, shown in the stages' output")
    lab: bool = F(False, "true: the emulated lab (the runbook builds L1's and L2's images and SSH key); "
                  "false: a real host with its own images (l1.image, l2.image)")
    host: Host = F(Host(), "L0")
    l1: L1 = F(L1(), "the L1 guest")
    nvme: NVMe = F(NVMe(), "the NVMe passed through: emulated by QEMU, or a controller of L0")
    l2: L2 = F(L2(), "the L2 guest")
    verify: Verify = F(Verify(), "stage 05's checks")
    bench: Bench = F(Bench(), "the benchmark")
    teardown: Teardown = F(Teardown(), "stage 99")

    @model_validator(mode="after")
    def _consistent(self):
        for key, msg in conflicts(self):
            raise PydanticCustomError("conflict", "{key}: {msg}", {"key": key, "msg": msg})
        return self


def conflicts(p: Params) -> list[tuple[str, str]]:
    """Settings that contradict each other, whatever the file: (key, what to change)."""
    out = list(p.nvme.problems())
    if p.l2.memory_mib >= p.l1.memory_mib and p.nvme.target == "l2":
        out.append(("l2.memory_mib", f"{p.l2.memory_mib} MiB must be less than L1's {p.l1.memory_mib} MiB"))
    if p.nvme.host and p.nvme.in_l2 and p.l2.select.serial is not None and p.nvme.select.serial \
            and p.l2.select.serial != p.nvme.select.serial:
        out.append(("l2.select.serial", f"`{p.l2.select.serial}` is not the serial of the controller L1 gets from "
                                        f"L0 (nvme.select.serial `{p.nvme.select.serial}`): make them equal, or "
                                        "leave l2.select.serial empty"))
    if not p.nvme.host and p.l2.select.serial is not None and p.l2.select.serial != p.nvme.serial:
        out.append(("l2.select.serial", f"`{p.l2.select.serial}` matches no NVMe: the one the runbook gives L1 "
                                        f"has serial `{p.nvme.serial}` (nvme.serial); make them equal, or leave "
                                        "l2.select.serial empty"))
    if not p.nvme.host and p.bench.size_mib > p.nvme.size_gib * 1024:
        out.append(("bench.size_mib", f"{p.bench.size_mib} MiB is more than the namespace's {p.nvme.size_gib} GiB "
                                      "(nvme.size_gib): fio would run past its end"))
    if not p.nvme.host and p.l1.image != "lab" and Path(p.l1.image) == p.nvme.backing_file:
        out.append(("nvme.backing_file", f"{p.nvme.backing_file} is also l1.image: give the NVMe a file of its own"))
    return out


def lab_conflicts(p: Params) -> list[tuple[str, str]]:
    """What a whole parameter file must agree on about the lab (a file, not a
    partial set of sections as the checks' tests build)."""
    out = []
    if p.l1.lab_l2:
        if not p.lab:
            out.append(("l1.image", "`lab-l2` is the lab's own L2 image: set `lab: true`"))
        elif not p.nvme.host or p.nvme.in_l2 or not p.host.ssh:
            out.append(("l1.image", "`lab-l2` (the lab's L2 image in the lab's L1, which acts as L0) is for a host "
                                    "NVMe that ends in L1: nvme.source host, nvme.target l1, and host.ssh reaching "
                                    "the lab's L1 (see parameters/lab-host-nvme.yaml)"))
        return out
    for key, image in (("l1.image", p.l1.image), ("l2.image", p.l2.image)):
        where = "on L0" if key == "l1.image" else "inside L1"
        if not p.lab and image == "lab":
            out.append((key, f"a real host (lab: false) needs its own image: give the absolute path of "
                             f"{key[:2].upper()}'s disk image {where}, or set `lab: true` for the emulated lab"))
        elif p.lab and image != "lab":
            out.append((key, f"the lab (lab: true) builds its own image: set `{key.split('.')[1]}: lab`, "
                             f"or `lab: false` to use {image}"))
    return out
