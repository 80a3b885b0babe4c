"""The runbook's parameters: one typed schema for all stages, loaded from YAML.

Loading refuses a wrong type, an unknown key, a missing value or an impossible
one before anything runs, naming the file, the key and what is expected.
``check_against_host`` adds what only the host can tell (CPUs, memory).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BDF_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$")
CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class ParamsError(ValueError):
    """A parameter file that cannot be used, with what to change."""


def parse_cpuset(text: str) -> list[int]:
    """'16-23,40-47' -> [16, ..., 23, 40, ..., 47]."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Host(Section):
    """L0, the machine the runbook starts on."""

    libvirt_uri: str = "qemu:///system"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    require_iommu: bool = True
    workdir: Path = Path("/var/lib/nested-nvme")
    kvm_smoke_timeout_s: int = Field(20, ge=5, le=600)
    # QEMU before 8.1 has a multi-threaded TCG race that stalls an L1 with several vCPUs
    # once KVM runs in it; stage 01 refuses that combination unless this is true.
    accept_tcg_stall_risk: bool = False


class Network(Section):
    """How L1 is reached: 'user' (QEMU user-mode networking, SSH forwarded to
    a port on 127.0.0.1) or 'bridge' (a host bridge; SSH to ``address``)."""

    mode: Literal["user", "bridge"] = "user"
    ssh_port: int = Field(2222, ge=1, le=65535)
    bridge: Optional[str] = None
    address: Optional[str] = None
    queues: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _bridge_needs_name(self):
        if self.mode == "bridge" and not (self.bridge and self.address):
            raise ValueError("mode 'bridge' needs 'bridge' (e.g. bridge0) and 'address' (L1's SSH address)")
        return self


class SSHAccess(Section):
    """SSH into L1: keys only, host key checked. In the lab both are made by
    the image build; on a real host give your key and known_hosts file."""

    user: str = "root"
    identity: Optional[Path] = None
    known_hosts: Optional[Path] = None
    config: Optional[Path] = None


class NVMe(Section):
    """The emulated NVMe drive L1 gets, later passed through to L2."""

    backing_file: Path = Path("/var/lib/nested-nvme/nvme.raw")
    size_gib: float = Field(1, gt=0, le=65536)
    serial: str = Field("1234", min_length=1, max_length=20)
    pci_addr: str = Field("0x10", pattern=r"^0x[0-1][0-9a-fA-F]$")
    remove_backing_file: bool = False


class L1(Section):
    """The L1 guest, built by stage 02 and configured by stage 03."""

    name: str = Field("nested-kvm", pattern=r"^[A-Za-z0-9_.+-]+$")
    image: str = "lab"
    sockets: int = Field(1, ge=1, le=16)
    cores: int = Field(2, ge=1, le=256)
    threads: int = Field(1, ge=1, le=8)
    cpuset: Optional[str] = None
    memory_mib: int = Field(2048, ge=512)
    cpu_mode: Literal["auto", "host-passthrough", "host-model", "maximum"] = "auto"
    network: Network = Network()
    ssh: SSHAccess = SSHAccess()
    iommu: Literal["auto", "intel", "amd"] = "auto"
    iommu_pt: bool = True
    virt_packages: list[str] = ["libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-utils"]
    replace: bool = False
    boot_timeout_s: int = Field(600, ge=10)

    @field_validator("cpuset")
    @classmethod
    def _cpuset(cls, v):
        if v is not None and not CPUSET_RE.match(v):
            raise ValueError("expected a cpuset like '16-23,40-47'")
        return v

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads


class Select(Section):
    """Which NVMe in L1 to pass through, when there are several."""

    serial: Optional[str] = None
    bdf: Optional[str] = None
    model: Optional[str] = None

    @field_validator("bdf")
    @classmethod
    def _bdf(cls, v):
        if v is not None and not BDF_RE.match(v):
            raise ValueError("expected a PCI address DDDD:BB:DD.F, e.g. 0000:00:02.0")
        return v.lower() if v else v


class L2(Section):
    """The L2 guest, inside L1, that gets the NVMe by VFIO."""

    name: str = Field("nvmetest", pattern=r"^[A-Za-z0-9_.+-]+$")
    image: str = "lab"
    vcpus: int = Field(1, ge=1, le=64)
    memory_mib: int = Field(512, ge=128)
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    select: Select = Select()
    replace: bool = False
    boot_timeout_s: int = Field(300, ge=10)
    baseline_consent: bool = False


class Verify(Section):
    """Stage 05's checks in L2."""

    mkfs: bool = False
    force_wipe: bool = False
    mount_point: str = "/data"


class Bench(Section):
    """fio on each layer."""

    profiles: list[Literal["randread-4k", "seqread-128k", "randwrite-4k", "seqwrite-128k"]] = [
        "randread-4k", "seqread-128k", "randwrite-4k"]
    runtime_s: float = Field(5, ge=0.1, le=3600)  # per profile and repeat; 0.5 is 500 ms
    size_mib: int = Field(64, ge=1)
    repeats: int = Field(3, ge=1, le=20)
    on_l0: bool = False


class Teardown(Section):
    """What stage 99 may remove."""

    l1: bool = True
    l2: bool = True


class Params(Section):
    """Every stage's parameters."""

    name: str = "lab"
    lab: bool = False
    host: Host = Host()
    l1: L1 = L1()
    nvme: NVMe = NVMe()
    l2: L2 = L2()
    verify: Verify = Verify()
    bench: Bench = Bench()
    teardown: Teardown = Teardown()

    @model_validator(mode="after")
    def _l2_fits_in_l1(self):
        if self.l2.memory_mib >= self.l1.memory_mib:
            raise ValueError(f"l2.memory_mib: {self.l2.memory_mib} MiB must be less than L1's {self.l1.memory_mib} MiB")
        return self


class _Loader(yaml.SafeLoader):
    """YAML without base-60 numbers, so an unquoted BDF like 0000:00:02.0 stays a string."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _explain(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against parameters/README.md)"
    if kind == "missing":
        return "required, but missing"
    return msg.removeprefix("Value error, ")


def load(path: str | Path) -> Params:
    """Read and validate a parameter file, or raise ParamsError saying what to fix."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such parameter file (the lab's is parameters/lab.yaml)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (host, l1, nvme, l2, ...) at the top")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: {_where(x['loc'])}: {_explain(x)} (got {x.get('input')!r})"
                 if x["type"] != "missing" else f"{path}: {_where(x['loc'])}: {_explain(x)}"
                 for x in e.errors()]
        raise ParamsError("\n".join(lines)) from None


def check_against_host(p: Params, cpus: list[int], memory_mib: int, path: str | Path = "parameters") -> None:
    """Refuse what this host cannot give: CPUs it lacks, more memory than it has."""
    problems = []
    if p.l1.cpuset:
        missing = sorted(set(parse_cpuset(p.l1.cpuset)) - set(cpus))
        if missing:
            problems.append(f"{path}: l1.cpuset: CPUs {missing} are not on this host "
                            f"(it has {len(cpus)}: {cpus[0]}-{cpus[-1]}); leave it empty to let the runbook choose")
    if p.l1.memory_mib > memory_mib:
        problems.append(f"{path}: l1.memory_mib: {p.l1.memory_mib} MiB asked, this host has {memory_mib} MiB")
    if problems:
        raise ParamsError("\n".join(problems))
