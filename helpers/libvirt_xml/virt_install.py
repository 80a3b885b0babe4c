"""The ``virt-install ... --print-xml`` command a reader would type for a ``Domain``.

For teaching: it shows the seed's command next to the XML this package writes.
It is close to what virt-install accepts but is not meant to round-trip.
"""
from __future__ import annotations

import shlex

from .devices import IOMMU, RNG, Channel, Controller, Disk, HostdevOnRootPort, HostdevPCI, Interface, Memballoon, Serial
from .domain import Domain


def _opts(*pairs: tuple[str, object]) -> str:
    """``k=v,k=v`` with the None values left out."""
    return ",".join(f"{k}={v}" for k, v in pairs if v is not None)


def _on_off(value: object) -> object:
    return None if value is None else ("on" if value else "off")


def _qemu_arg_groups(args: list[str]) -> list[str]:
    """``['-drive', 'file=..', '-device', 'nvme,..']`` -> ``['-drive file=..', '-device nvme,..']``."""
    groups: list[str] = []
    for arg in args:
        if arg.startswith("-") or not groups:
            groups.append(arg)
        else:
            groups[-1] += " " + arg
    return groups


def _device_flags(device: object) -> list[str]:
    q = shlex.quote
    if isinstance(device, Disk):
        # driver.type, not format=: virt-install applies format= only to storage it creates
        opts = _opts(("path", device.path), ("driver.type", device.format), ("cache", device.cache),
                     ("discard", device.discard), ("bus", device.bus), ("target.dev", device.target_dev if device.bus == "nvme" else None),
                     ("serial", device.serial), ("readonly", "on" if device.readonly else None))
        return [f"--disk {q(opts)}"]
    if isinstance(device, Interface):
        first = ("bridge", device.source_bridge) if device.type == "bridge" else ("type", "user")
        opts = _opts(first, ("mac", device.mac), ("model", device.model),
                     ("driver_name", device.driver_name), ("driver_queues", device.queues))
        return [f"--network {q(opts)}"]
    if isinstance(device, HostdevPCI):
        return [f"--hostdev {device.bdf}"]
    if isinstance(device, HostdevOnRootPort):  # the root port, then the hostdev placed on its bus
        return [f"--controller {q(_opts(('type', 'pci'), ('model', 'pcie-root-port'), ('index', device.port_index)))}",
                f"--hostdev {device.bdf},address.type=pci,address.bus={device.port_index:#04x},address.slot=0x00"]
    if isinstance(device, IOMMU):
        opts = _opts(("model", device.model), ("driver.intremap", _on_off(device.intremap)),
                     ("driver.caching_mode", _on_off(device.caching_mode)),
                     ("driver.eim", _on_off(device.eim)), ("driver.iotlb", _on_off(device.iotlb)),
                     ("driver.passthrough", _on_off(device.passthrough)), ("driver.xtsup", _on_off(device.xtsup)))
        return [f"--iommu {opts}"]
    if isinstance(device, Channel):
        return [f"--channel unix,target.type=virtio,target.name={device.name}"]
    if isinstance(device, Serial):
        if device.kind == "file":
            flags = [f"--serial {q(_opts(('file,path', device.log_path)))}"]
        else:
            flags = [f"--serial {q(_opts(('pty,log.file', device.log_path)))}"]
        return flags
    if isinstance(device, Memballoon):
        return [f"--memballoon {device.model}"]
    if isinstance(device, RNG):
        return [f"--rng {q(device.backend)}"]
    if isinstance(device, Controller):
        opts = _opts(("type", device.type), ("model", device.model), ("index", device.index),
                     ("serial", device.serial))
        return [f"--controller {q(opts)}"]
    raise TypeError(f"no virt-install flag known for {type(device).__name__}")


def virt_install_command(domain: Domain) -> str:
    """The equivalent ``virt-install`` command, one flag a line, ``\\``-continued like the seed."""
    q = shlex.quote
    cpu, vcpu, os_ = domain.cpu, domain.vcpu, domain.os
    flags = [f"--machine {os_.machine}", f"--virt-type={domain.type}", f"--name={q(domain.name)}"]
    if domain.uuid:
        flags.append(f"--uuid={domain.uuid}")
    features = []
    if domain.features.kvm_hidden:
        features.append("kvm_hidden=on")
    if domain.features.ioapic_driver:
        features.append(f"ioapic.driver={domain.features.ioapic_driver}")
    if features:
        flags.append(f"--features {','.join(features)}")
    topology = cpu.sockets is not None
    flags.append("--vcpus " + _opts(("vcpus", None if topology else vcpu.count),
                                    ("sockets", cpu.sockets), ("cores", cpu.cores), ("threads", cpu.threads),
                                    ("placement", "static"), ("cpuset", vcpu.cpuset)).removeprefix("vcpus="))
    flags.append(f"--cpu={cpu.mode if cpu.mode != 'custom' else cpu.model}"
                 + (f",check={cpu.check}" if cpu.check else "")
                 + "".join(f",disable={name}" for name in cpu.disabled))
    flags.append(f"--memory={domain.memory_mib}")
    for device in domain.devices:
        flags.extend(_device_flags(device))
    if domain.qemu_args is not None:
        flags.extend(f"--qemu-commandline={q(group)}" for group in _qemu_arg_groups(domain.qemu_args.args))
    if os_.kernel:
        flags.append("--boot " + q(_opts(("kernel", os_.kernel), ("initrd", os_.initrd),
                                         ("kernel_args", f'"{os_.cmdline}"' if os_.cmdline else None))))
    elif os_.boot_dev:
        flags.append(f"--boot {os_.boot_dev}")
    if domain.description:
        flags.append(f"--description={q(domain.description)}")
    flags += ["--nographics", "--print-xml"]
    return "virt-install \\\n" + " \\\n".join(f"    {flag}" for flag in flags)
