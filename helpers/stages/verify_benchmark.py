"""Stage 05: in L2, what the seed checks after "登录L2-kvm", then fio on each layer."""
from __future__ import annotations

from datetime import datetime

from .. import by_hand
from ..bench import fio, results
from ..errors import RunbookError
from ..nb import Stage
from ..ops import Change, no_change
from ..ops import verify
from ..paths import paths


def controller(ctx: Stage) -> tuple[verify.Controller, str]:
    c, out = verify.controller(ctx.l2())
    ctx.state.update("l2_verify", controller={"bdf": c.bdf, "ids": c.ids, "class": c.pci_class, "line": c.line})
    return c, out


def namespaces(ctx: Stage) -> tuple[dict, str]:
    """`nvme list` in L2: model, serial, size and block size of the passed-through namespace."""
    devs, table = verify.namespaces(ctx.l2())
    want = ctx.params.nvme.serial
    match = [d for d in devs if d.get("SerialNumber", "").strip() == want]
    if not match:
        raise RunbookError(f"no namespace in L2 has serial {want}: " +
                           ", ".join(f"{d.get('DevicePath')} serial {d.get('SerialNumber')}" for d in devs),
                           hint="L2 sees another NVMe than the one passed through: check l2.select")
    d = match[0]
    info = {"device": d.get("DevicePath"), "model": d.get("ModelNumber", "").strip(),
            "serial": d.get("SerialNumber", "").strip(), "size_bytes": d.get("PhysicalSize"),
            "sector_size": d.get("SectorSize"), "firmware": d.get("Firmware", "").strip()}
    ctx.state.update("l2_verify", nvme=info)
    return info, table


def mkfs(ctx: Stage, device: str) -> tuple[Change, str]:
    v = ctx.params.verify
    ch, out = verify.make_xfs(ctx.l2(), device, v.mount_point, consent=v.mkfs, force=v.force_wipe)
    ctx.state.update("l2_verify", mkfs=ch.detail)
    return ch, out


def mount(ctx: Stage, device: str) -> Change:
    ch = verify.mount(ctx.l2(), device, ctx.params.verify.mount_point)
    ctx.state.update("l2_verify", mounted=True)
    return ch


def df(ctx: Stage) -> tuple[dict, str]:
    info, out = verify.df(ctx.l2(), ctx.params.verify.mount_point)
    if info["type"] != "xfs":
        raise RunbookError(f"{ctx.params.verify.mount_point} in L2 is {info['type']}, not xfs")
    ctx.state.update("l2_verify", df=info)
    return info, out


def bench_l2(ctx: Stage) -> list[dict] | Change:
    """fio in L2 on a file of the new XFS (direct I/O): the passed-through disk as used.
    Once per run, like the L1 baseline: a rerun keeps the figures (a new run measures again)."""
    if ctx.state.get("bench_l2"):
        return no_change("L2 benchmark", "already measured in this run (a new run id measures again)")
    b = ctx.params.bench
    target = ctx.params.verify.mount_point.rstrip("/") + "/fio-bench.bin"
    rows = fio.run_profiles(ctx.l2(), "L2", target, list(b.profiles), b.repeats, b.runtime_s, b.size_mib)
    ctx.state.set("bench_l2", rows)
    return rows


def bench_l0(ctx: Stage) -> list[dict] | Change:
    """fio on the host, on a scratch file beside the backing file (never on the backing file: L2 uses it)."""
    b = ctx.params.bench
    if not b.on_l0:
        return no_change("L0 benchmark", "bench.on_l0 is false")
    if ctx.state.get("bench_l0"):
        return no_change("L0 benchmark", "already measured in this run (a new run id measures again)")
    target = paths(ctx.params).l0_bench
    ctx.state.remember_created("files", str(target))
    rows = fio.run_profiles(ctx.l0, "L0", str(target), list(b.profiles), b.repeats, b.runtime_s, b.size_mib)
    ctx.state.set("bench_l0", rows)
    return rows


def summary(ctx: Stage) -> tuple[list[dict], list[dict], dict]:
    """Every layer's runs, their mean and spread, L2 as a share of L1, and the files written:
    results.json with what was verified, where, and in which environment (see results.schema.json)."""
    rows = (ctx.state.get("bench_l0") or []) + (ctx.state.get("baseline") or []) + (ctx.state.get("bench_l2") or [])
    s = fio.summarize(rows)
    rel = fio.relative(s)
    run_dir = ctx.state.path.parent
    run = results.run_info(run_dir, ctx.params_file, ctx.params.name, datetime.now())
    files = results.write(run_dir, results.document(ctx.state.data, ctx.params, run, rows, s, rel))
    return s, rel, files


def by_hand_mkfs(ctx: Stage, device: str) -> by_hand.ByHand:
    return by_hand.mkfs(device)


def by_hand_mount(ctx: Stage, device: str) -> by_hand.ByHand:
    return by_hand.mount(device, ctx.params.verify.mount_point)


def by_hand_bench(ctx: Stage) -> list[by_hand.ByHand]:
    """fio in L2 on a file of the XFS and, with ``bench.on_l0``, on a scratch file on the host."""
    b = ctx.params.bench
    l2_target = ctx.params.verify.mount_point.rstrip("/") + "/fio-bench.bin"
    out = [by_hand.fio(l2_target, fio.fio_command(l2_target, list(b.profiles), b.runtime_s, b.size_mib),
                       b.repeats, "root@L2")]
    if b.on_l0:
        l0_target = str(paths(ctx.params).l0_bench)
        out.append(by_hand.fio(l0_target, fio.fio_command(l0_target, list(b.profiles), b.runtime_s, b.size_mib),
                               b.repeats, "root@L0"))
    return out
