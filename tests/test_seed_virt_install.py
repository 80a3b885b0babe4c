"""The runbook's L1 for the seed's own host (parameters/seed-xeon4214.yaml) is the seed's L1.

The seed defines L1 with ``virt-install ... --print-xml > nested-kvm.xml``. Here the real
virt-install (Debian's virtinst) prints the XML of that very command line
(tests/fixtures/virtinst/seed-l1.sh, verbatim from the seed), and again with each of its
flags left out: what changes is what that flag sets. Every element and attribute the
seed's flags set must be in the XML the runbook renders for seed-xeon4214.yaml with the
same value, or be listed in EQUIVALENT with its libvirt-native equivalent, which is
checked too. What virt-install adds on its own whatever the flags (USB controllers,
clock timers, power management, a pty console) is not the seed's choice and is not
compared. Nothing here needs a libvirt daemon or a domain: virt-install reads the
capabilities in tests/fixtures/virtinst through its own test URI.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import params
from helpers.checks import KvmUsability, choose_accel
from helpers.libvirt_xml import supports_native_nvme, virt_install_command
from helpers.libvirt_xml.compare import _device_key, differences
from helpers.ops.l1 import l1_domain
from helpers.paths import paths

ROOT = Path(__file__).parent.parent
FIX = Path(__file__).parent / "fixtures" / "virtinst"
SEED_PARAMS = ROOT / "parameters" / "seed-xeon4214.yaml"
VIRTINST = Path("/usr/share/virt-manager/virtinst")
PYTHON = "/usr/bin/python3"       # the interpreter /usr/bin/virt-install runs with
URI = f"__virtinst_test__test:///default,fakeuri=qemu:///system,caps={FIX / 'capabilities.xml'}"
SEED_LIBVIRT = 4_005_000          # the seed's CentOS 7 ships libvirt 4.5: no native NVMe disk
Q = "{http://libvirt.org/schemas/domain/qemu/1.0}"

pytestmark = pytest.mark.skipif(
    not (VIRTINST.is_dir() and Path(PYTHON).exists()),
    reason="virtinst is not installed (Debian package virtinst; `scripts/setup.sh --test` installs it): "
           "this test runs the real virt-install --print-xml on the seed's command line")


def seed_flags() -> list[list[str]]:
    """The seed's command line as flags (each with its value), the output redirect left out."""
    text = (FIX / "seed-l1.sh").read_text().replace("\\\n", " ").split(">")[0]
    argv = shlex.split(text)
    assert argv[0] == "virt-install"
    flags: list[list[str]] = []
    for a in argv[1:]:
        if a.startswith("--"):
            flags.append([a])
        else:
            flags[-1].append(a)
    return flags


def print_xml(argvs: list[list[str]], cwd: Path) -> list[str]:
    """The XML the real virt-install prints for each command line (in ``cwd``, where a relative
    --disk path resolves). The seed's virt-install (CentOS 7) asked for no --osinfo: nor does this one."""
    env = dict(os.environ, VIRTINSTALL_OSINFO_DISABLE_REQUIRE="1")
    p = subprocess.run([PYTHON, str(Path(__file__).parent / "virtinst_print_xml.py")],
                       input=json.dumps([["--connect", URI, *a] for a in argvs]), capture_output=True,
                       text=True, env=env, cwd=cwd, timeout=300)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    for argv, r in zip(argvs, results):
        assert r["rc"] == 0, f"virt-install {shlex.join(argv)}:\n{r['err'][-800:]}"
    return [r["out"] for r in results]


def items(xml: str) -> set[tuple[str, str, str]]:
    """(path, what, value) for every element ('' , ''), attribute ('@name', value) and text;
    devices are named by kind and key (as compare.py pairs them), <qemu:commandline> as
    (option, value) pairs."""
    out: set[tuple[str, str, str]] = set()

    def walk(e: ET.Element, path: str) -> None:
        out.add((path, "", ""))
        out.update((path, f"@{k}", v) for k, v in e.attrib.items())
        if (e.text or "").strip():
            out.add((path, "text", e.text.strip()))
        seen: dict[str, int] = {}
        for c in e:
            if c.tag == f"{Q}commandline":
                args = [a.get("value") for a in c]
                out.update(("qemu:commandline", o, v) for o, v in zip(args[::2], args[1::2]))
                continue
            key = _device_key(c) if e.tag == "devices" else c.tag
            seen[key] = seen.get(key, 0) + 1
            walk(c, f"{path}/{key}" + (f"#{seen[key]}" if seen[key] > 1 else ""))
    walk(ET.fromstring(xml), "domain")
    return out


# A required flag cannot be left out: it is given another value instead.
REPLACED = {"--name=nested-kvm": ["--name=other"], "--memory=32768": ["--memory=1024"],
            "--disk": ["--disk", "path=other.img,size=1"]}
KEPT = ("--print-xml",)   # the output, not a setting


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """(what each seed flag sets: item -> flag, what the seed's flags take away: path -> flag, the seed's XML)."""
    cwd = tmp_path_factory.mktemp("seed-cwd")
    flags = seed_flags()
    full = [a for f in flags for a in f]
    varied = [i for i, f in enumerate(flags) if f[0] not in KEPT]

    def without(i):
        return [a for j, f in enumerate(flags) for a in (f if j != i else REPLACED.get(f[0], []))]
    first, second, *others = print_xml([full, full] + [without(i) for i in varied], cwd)
    whole = items(first)
    generated = {(p, w) for p, w, _ in whole ^ items(second)}   # differs run to run: UUID, MACs
    sets: dict[tuple[str, str, str], str] = {}
    removes: dict[str, str] = {}
    for i, xml in zip(varied, others):
        other = items(xml)
        for it in whole - other:
            if (it[0], it[1]) not in generated:
                sets.setdefault(it, flags[i][0])
        if flags[i][0] not in REPLACED:
            for path, what, _ in other - whole:
                if what == "" and not any(p == path for p, _, _ in whole):
                    removes.setdefault(path, flags[i][0])
    return sets, removes, first, cwd


def runbook_l1(p=None, disk=None, console=None):
    """L1 as the runbook renders it for seed-xeon4214.yaml: the accelerator follows host.accel: kvm
    whatever this machine offers, the cpuset is the parameters', the NVMe goes by <qemu:commandline>
    as on the seed's libvirt 4.5."""
    p = p or params.load(SEED_PARAMS)
    ps = paths(p)
    accel, _ = choose_accel(KvmUsability(False, "no KVM on this machine", False), p.host.accel)
    return l1_domain(p, accel, p.l1.cpuset, disk or ps.l1_disk, console or ps.l1_console,
                     native_nvme=supports_native_nvme(SEED_LIBVIRT))


def _qemu_args(root) -> list[str]:
    return [a.get("value") for a in root.iter(f"{Q}arg")]


# (path, what, value or None for any value) -> (the libvirt-native equivalent, a check of it in the runbook's XML)
EQUIVALENT = {
    ("domain/currentMemory", "text", None): (
        "libvirt sets <currentMemory> to <memory> when it is left out",
        lambda r, v, p: r.find("currentMemory") is None and int(r.find("memory").text) == int(v)),
    ("domain/cpu/topology", "@dies", "1"): (
        "libvirt's default for dies is 1 (it writes dies='1' into the definition itself)",
        lambda r, v, p: r.find("cpu/topology").get("dies") in (None, "1")),
    ("domain/devices/disk[vda]/source", "@file", None): (
        "virt-install makes the seed's relative path img-nested.qcow2 absolute in its working folder; "
        "the seed worked in /kvm/nested, which seed-xeon4214.yaml's l1.image names",
        lambda r, v, p: r.find("devices/disk/source").get("file") == str(Path(p.l1.image))
        and Path(v).name == Path(p.l1.image).name),
    ("qemu:commandline", "-machine", "q35,accel=kvm,kernel-irqchip=split"): (
        "libvirt-native: <domain type='kvm'> is accel=kvm, <type machine='q35'> the machine, and "
        "<ioapic driver='qemu'/> is kernel_irqchip=split",
        lambda r, v, p: r.get("type") == "kvm" and r.find("os/type").get("machine") == "q35"
        and r.find("features/ioapic").get("driver") == "qemu" and "-machine" not in _qemu_args(r)),
    ("qemu:commandline", "-device", "intel-iommu,intremap=on,device-iotlb=on"): (
        "libvirt-native: <iommu model='intel'><driver intremap='on' iotlb='on'/> is "
        "-device intel-iommu,intremap=on,device-iotlb=on (the runbook adds caching_mode='on', which VFIO in L1 needs)",
        lambda r, v, p: (i := r.find("devices/iommu")) is not None and i.get("model") == "intel"
        and i.find("driver").get("intremap") == "on" and i.find("driver").get("iotlb") == "on"
        and not any(a.startswith("intel-iommu") for a in _qemu_args(r))),
    ("qemu:commandline", "-device", "nvme,drive=nvm,serial=1234"): (
        "the same -device with its slot fixed (bus=pcie.0,addr=0x10), so L1 sees the NVMe at one BDF",
        lambda r, v, p: any(a.startswith(v + ",") and a[len(v) + 1:] == "bus=pcie.0,addr=0x10"
                            for a in _qemu_args(r))),
    ("domain/devices/controller[type=pci,index=0]", None, None): (
        "q35's PCIe root and root ports: libvirt adds the pcie-root for q35 and a pcie-root-port for "
        "each PCIe device when the domain is defined (virt-install adds spare ports for hotplug, "
        "which L1 does not use)",
        lambda r, v, p: r.find("os/type").get("machine") == "q35"
        and not r.findall("devices/controller[@type='pci']")),
    ("domain/devices/interface[type=bridge]/mac", None, None): (
        "virt-install writes a random MAC into each NIC; libvirt generates one at define when there is none",
        lambda r, v, p: all(n.find("mac") is None for n in r.findall("devices/interface"))),
}
# MACs and the UUID differ on every virt-install run: libvirt generates both when the definition has none.
GENERATED = ("domain/uuid", "domain/devices/interface[type=bridge]/mac", "domain/devices/interface[type=bridge]#2/mac")


def _equivalent(item):
    path, what, value = item
    base = re.sub(r"#\d+", "", path)
    for key in ((path, what, value), (path, what, None), (base, None, None)):
        if key in EQUIVALENT:
            return key
    return None


def test_every_setting_of_the_seeds_virt_install_is_in_the_runbooks_l1(seed):
    sets, removes, seed_xml, _ = seed
    p = params.load(SEED_PARAMS)
    dom = runbook_l1(p)
    ours_xml = dom.to_xml()
    ours, root = items(ours_xml), ET.fromstring(ours_xml)
    assert len(sets) > 60, "the seed's flags set these: " + repr(sorted(sets))   # the probe itself works
    missing, used = [], set()
    for item, flag in sorted(sets.items()):
        if item in ours:
            continue
        key = _equivalent(item)
        if key is None:
            missing.append(f"{flag}: {item} not in the runbook's L1 and no equivalent is listed")
            continue
        used.add(key)
        why, holds = EQUIVALENT[key]
        if not holds(root, item[2], p):
            missing.append(f"{flag}: {item}: the equivalent does not hold in the runbook's L1: {why}")
    assert missing == [], "\n".join(missing)
    assert used == set(EQUIVALENT), f"equivalences no seed setting needs: {set(EQUIVALENT) - used}"
    # what the seed's flags take away (--nographics: no graphics, video, sound...) the runbook has not either
    present = {path for path, what, _ in ours if what == ""}
    assert removes and not [f"{flag}: {path}" for path, flag in removes.items() if path in present]
    # the seed's two NICs on bridge0 with the same options
    nics = root.findall("devices/interface[@type='bridge']")
    assert len(nics) == 2 and all(n.find("source").get("bridge") == "bridge0" for n in nics)
    assert ET.fromstring(seed_xml).find("uuid") is not None and root.find("uuid") is None
    for path in GENERATED:
        assert not any(it[0] == path and it[1] in ("text", "@address") for it in ours)


def test_the_runbooks_virt_install_command_makes_its_l1(seed, tmp_path):
    """The runbook's equivalent virt-install command (what check mode shows for the seed) is a
    real virt-install command: what it prints, defined in libvirt's test driver (in memory, gone
    with the connection) and read back as libvirt keeps it, holds everything the runbook's XML sets."""
    p = params.load(SEED_PARAMS)
    image = tmp_path / "img-nested.qcow2"
    image.write_bytes(b"")   # on the seed's host the image is there; virt-install wants it to exist
    dom = runbook_l1(p, disk=image, console=tmp_path / "nested-kvm-console.log")
    cmd = virt_install_command(dom)
    argv = shlex.split(cmd.replace("\\\n", " "))
    assert argv[0] == "virt-install" and argv[-1] == "--print-xml"
    (made,) = print_xml([argv[1:]], tmp_path)
    (tmp_path / "made.xml").write_text(made)
    r = subprocess.run(["virsh", "-c", "test:///default", f"define {tmp_path / 'made.xml'}; dumpxml {p.l1.name}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kept = r.stdout[r.stdout.index("<domain"):]
    # the test driver keeps no <qemu:commandline> (only the QEMU driver knows that namespace): compared as printed
    assert differences(dom.to_xml(), kept) == ["qemu:commandline: missing"]
    assert _qemu_args(ET.fromstring(made)) == _qemu_args(ET.fromstring(dom.to_xml()))
