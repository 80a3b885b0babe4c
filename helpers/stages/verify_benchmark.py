"""Stage 05: in the layer that holds the NVMe (L2, or L1 with nvme.target l1), what the seed checks after "登录L2-kvm", then fio on each layer: ``STEPS``."""
from __future__ import annotations

import time
from datetime import datetime

from .. import by_hand, execute
from ..bench import fio, results
from ..errors import RunbookError
from ..nb import Stage
from ..ops import Change, did, no_change
from ..checks.passthrough import l2_controller, l2_namespaces
from ..facts import storage
from ..ops import verify
from ..facts import storage
from ..paths import paths
from ..steps import Action, Plan, Step, no_change_why
from . import host_nvme


def controller(ctx: Stage) -> tuple[storage.Controller, str]:
    c, out = l2_controller(ctx.holder())
    ctx.state.update("l2_verify", controller={"bdf": c.bdf, "ids": c.ids, "class": c.pci_class, "line": c.line})
    return c, out


def namespaces(ctx: Stage) -> tuple[dict, str]:
    """`nvme list` in L2: model, serial, size and block size of the passed-through namespace."""
    devs, table = l2_namespaces(ctx.holder())
    want = host_nvme.serial(ctx)
    match = [d for d in devs if d.get("SerialNumber", "").strip() == want]
    if not match:
        raise RunbookError(f"no namespace in {ctx.holder_name} has serial {want}: " +
                           ", ".join(f"{d.get('DevicePath')} serial {d.get('SerialNumber')}" for d in devs),
                           hint=f"{ctx.holder_name} sees another NVMe than the one passed through: check "
                                + ("l2.select" if ctx.params.nvme.in_l2 else "nvme.select"))
    d = match[0]
    info = {"device": d.get("DevicePath"), "model": d.get("ModelNumber", "").strip(),
            "serial": d.get("SerialNumber", "").strip(), "size_bytes": d.get("PhysicalSize"),
            "sector_size": d.get("SectorSize"), "firmware": d.get("Firmware", "").strip()}
    ctx.state.update("l2_verify", nvme=info)
    return info, table


def size_text(size_bytes) -> str:
    """A disk's size one way everywhere: GiB (powers of 1024, as nvme.size_gib) and exact bytes."""
    try:
        b = int(size_bytes)
    except (TypeError, ValueError):
        return "not read"
    return f"{b / 2**30:g} GiB ({b:,} bytes)"


def df(ctx: Stage) -> tuple[dict, str]:
    info, out = storage.df(ctx.holder(), ctx.params.verify.mount_point)
    if info["type"] != "xfs":
        raise RunbookError(f"{ctx.params.verify.mount_point} in {ctx.holder_name} is {info['type']}, not xfs")
    ctx.state.update("l2_verify", df=info)
    return info, out


def summary(ctx: Stage) -> tuple[list[dict], list[dict], dict]:
    """Every layer's runs, their median and spread, the comparisons with their verdicts, and the
    files written: results.json with what was verified, where, and in which environment
    (see results.schema.json)."""
    rows = [r for key in ("bench_l0", "baseline", "bench_l2", "bench_l2_virtio") for r in ctx.state.get(key) or []]
    s = fio.summarize(rows)
    verdicts = fio.comparisons(s)
    run_dir = ctx.state.path.parent
    run = results.run_info(run_dir, ctx.params_file, ctx.params.name, datetime.now())
    files = results.write(run_dir, results.document(ctx.state.data, ctx.params, run, rows, s, verdicts,
                                                    skipped=ctx.state.get("bench_skipped") or []))
    return s, verdicts, files


def by_hand_mkfs(ctx: Stage, device: str) -> by_hand.ByHand:
    return by_hand.mkfs(device)


def by_hand_mount(ctx: Stage, device: str) -> by_hand.ByHand:
    return by_hand.mount(device, ctx.params.verify.mount_point)


def l0_target(ctx: Stage) -> str:
    """On L0, the namespace is the emulated drive's backing file: the same bytes L1 and L2 see."""
    return str(ctx.params.nvme.backing_file)


def l2_accel(ctx: Stage) -> str | None:
    return (ctx.state.get("l2") or {}).get("accel")


# --- the steps ---------------------------------------------------------------------------------

UP_FOR_S = 60  # how long "L2 runs", once seen in this stage, stands for the next steps' plans


def _l2_not_up(ctx: Stage) -> str | None:
    """Why the layer that holds the NVMe cannot be read yet (L2, or L1 with nvme.target l1), or None.
    No step of this stage starts or stops a guest: L2 seen running by one step's plan is taken as
    running by the plans of the steps within the next minute (each check is a `virsh` in L1, a third
    of a second under TCG); a guest that went away meanwhile fails the step that reads it, by name."""
    if not ctx.params.nvme.in_l2:
        from .build_l1 import l1_not_up
        return l1_not_up(ctx)
    seen = ctx.seen.get("holder_up_at")
    if seen is not None and time.monotonic() - seen < UP_FOR_S:
        return None
    from .build_l2 import _l2_not_up
    why = _l2_not_up(ctx)
    if why is None:
        ctx.seen["holder_up_at"] = time.monotonic()
    return why


NO_NAMESPACE = "L2's namespace is read (step '`nvme list` in L2': L2 runs)"


class Controller(Step):
    label = "The controller in L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        return self.reads("lspci -Dnn in L2", data=ctx.holder_name)  # data: where it reads, for show

    def apply(self, ctx: Stage, plan: Plan):
        return controller(ctx)

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        ctrl, _ = result
        print(f"{plan.data} sees an NVMe controller [{ctrl.ids}], class {ctrl.pci_class}")
        ui.show_output("lspci -Dnn | grep NVM", ctrl.line, prompt=f"root@{plan.data}")


class Namespaces(Step):
    label = "`nvme list` in L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        return self.reads(f"nvme list in {ctx.holder_name} (the namespace with serial {host_nvme.serial(ctx)})",
                          data=ctx.holder_name)  # data: where it reads, for show

    def apply(self, ctx: Stage, plan: Plan):
        ctx.seen["ns"], table = namespaces(ctx)
        return ctx.seen["ns"], table

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        ns, table = result
        ui.show_output("nvme list", table, prompt=f"root@{plan.data}")
        ui.show_table([(ns["device"], ns["model"], ns["serial"], size_text(ns["size_bytes"]),
                        f"{ns['sector_size']} bytes")],
                      ["device", "model", "serial", "size", "sector size"])
        print("nvme list counts in powers of 1000 (GB); the table in powers of 1024 (GiB), as nvme.size_gib does.")


class Mkfs(Step):
    """mkfs.xfs on the namespace in L2, only with consent (verify.mkfs); a signature only with force_wipe."""
    label = "mkfs.xfs"

    def plan(self, ctx: Stage) -> Plan:
        ns = ctx.seen.get("ns")
        if ns is None:
            return self.unknown(NO_NAMESPACE)
        v, dev = ctx.params.verify, ns["device"]
        was = verify.plan_xfs(ctx.holder(), dev, v.mount_point, consent=v.mkfs, force=v.force_wipe)
        if was is None:
            return self.no_change(f"{dev} is XFS and mounted at {v.mount_point}")
        return Plan(self.label, [Action(ctx.holder_name, f"mkfs.xfs on {dev} in {ctx.holder_name} (now: {was}): everything on it is lost",
                                        by_hand.mkfs(dev).commands)], data=(dev, was))

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            ch, out = no_change("mkfs.xfs", no_change_why(plan)), ""
        else:
            ch, out = verify.apply_xfs(ctx.holder(), *plan.data)
        ctx.state.update("l2_verify", mkfs=ch.detail)
        return ch, out

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        ch, out = result
        ui.show_changes([ch])
        if out:  # mkfs ran: the plan's one action, in the layer that holds the NVMe
            ui.show_output(f"mkfs.xfs -f {ch.what.split()[-1]}", out, prompt=f"root@{plan.actions[0].machine}")


class Mount(Step):
    label = "Mount"

    def plan(self, ctx: Stage) -> Plan:
        ns = ctx.seen.get("ns")
        if ns is None:
            return self.unknown(NO_NAMESPACE)
        dev, mp = ns["device"], ctx.params.verify.mount_point
        # after a mkfs planned in this run the mount is needed whatever findmnt says now
        if not verify.plan_mount(ctx.holder(), dev, mp):
            return self.no_change(f"{dev} is mounted at {mp}")
        return Plan(self.label, [Action(ctx.holder_name, f"mount {dev} on {mp} in {ctx.holder_name}", by_hand.mount(dev, mp).commands[:2])],
                    data=(dev, mp))

    def apply(self, ctx: Stage, plan: Plan) -> list[Change]:
        if plan.changes:
            execute.run(ctx, plan.actions[0])
        dev, mp = plan.data if plan.changes else ("", "")
        ch = did(f"mount {dev} {mp}", "mounted") if plan.changes else no_change("mount", no_change_why(plan))
        ctx.state.update("l2_verify", mounted=True)
        return [ch]


class Df(Step):
    label = "df -Th in L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        if not (ctx.state.get("l2_verify") or {}).get("mounted"):
            return self.unknown(f"the namespace is mounted at {ctx.params.verify.mount_point} (step 'Mount')")
        return self.reads(f"df -Th {ctx.params.verify.mount_point} in {ctx.holder_name}",
                          data=ctx.holder_name)  # data: where it reads, for show

    def apply(self, ctx: Stage, plan: Plan):
        return df(ctx)

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        ui.show_output(f"df -Th {result[0]['mounted_on']}", result[1], prompt=f"root@{plan.data}")


WRITES_AFTER_MKFS = ("the namespace holds the XFS mounted at {mp} (made by an earlier attempt): "
                     "writes under it would destroy it; a new run (from stage 04) measures them")


def _namespace_writes(ctx: Stage, consent_key: str, consent: bool) -> str | None:
    """Why fio's write profiles may not run on the passed-through namespace now, or None.
    Writing to the namespace (in L2 or to its backing file on L0) destroys what it holds:
    it needs the consent named, no mounted filesystem, and no signature unless verify.force_wipe."""
    if not consent:
        return f"{consent_key} is false"
    ns = ctx.seen["ns"]
    l2, dev, v = ctx.holder(), ns["device"], ctx.params.verify
    if storage.mounts_of(l2, dev):
        return WRITES_AFTER_MKFS.format(mp=", ".join(storage.mounts_of(l2, dev)))
    sig = storage.signature(l2, dev)
    if sig and not v.force_wipe:
        return f"{dev} in {ctx.holder_name} carries a {sig} signature and verify.force_wipe is false"
    return None


def _fio_plan(step: Step, machine: str, target: str, kind: str, profiles: list[str], left_out: list[str],
              why_not: str | None, b, prompt: str, detail: str) -> Plan:
    cmd = by_hand.fio(target, fio.fio_command(target, profiles, b.runtime_s, b.size_mib), b.repeats, prompt).commands
    writes = "reads and WRITES" if any(map(fio.is_write, profiles)) else "reads only"
    what = (f"run fio on {detail} {target}, its first {b.size_mib} MiB ({fio.TARGET_NAMES[kind]}): {writes} "
            f"({', '.join(profiles)}, {b.repeats} times, {b.runtime_s:g} s each)")
    if left_out:
        what += f"; left out: {', '.join(left_out)} ({why_not})"
    return Plan(step.label, [Action(machine, what, cmd)], data=(target, profiles, left_out, why_not))


def _skipped(ctx: Stage, layer: str, kind: str, left_out: list[str], why: str | None) -> None:
    if left_out:
        done = [x for x in ctx.state.get("bench_skipped") or [] if (x["layer"], x["target_kind"]) != (layer, kind)]
        ctx.state.set("bench_skipped", done + [{"layer": layer, "target_kind": kind, "profiles": left_out,
                                                "reason": why}])


class BenchL2(Step):
    """fio in L2 on the raw namespace, before mkfs: the same job as in L1 and on L0. Reads always;
    writes with ``verify.mkfs`` (the consent to destroy what the namespace holds). Once per run."""
    label = "fio on the namespace in L2"

    def plan(self, ctx: Stage) -> Plan:
        if ctx.state.get("bench_l2"):
            return self.no_change("measured already in this run (a new run id measures again)")
        ns = ctx.seen.get("ns")
        if ns is None:
            return self.unknown(NO_NAMESPACE)
        b = ctx.params.bench
        why = _namespace_writes(ctx, "verify.mkfs", ctx.params.verify.mkfs)
        run, left_out = fio.split_by_consent(b.profiles, why is None)
        return _fio_plan(self, ctx.holder_name, ns["device"], "namespace", run, left_out, why, b,
                         f"root@{ctx.holder_name}", "the passed-through namespace")

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            return [no_change("L2 benchmark", no_change_why(plan))]
        b, (target, run, left_out, why) = ctx.params.bench, plan.data
        layer = ctx.holder_name
        in_l2 = layer == "L2"
        rows = fio.run_profiles(ctx.holder(), layer, target, run, b.repeats, b.runtime_s, b.size_mib,
                                target_kind="namespace", accel=l2_accel(ctx) if in_l2 else ctx.state.get("accel"),
                                iommu="translated" if in_l2 else "none")
        _skipped(ctx, layer, "namespace", left_out, why)
        ctx.state.set("bench_l2", rows)
        return rows

    def show(self, plan: Plan, rows) -> None:
        from .. import ui
        ui.show_fio_rows(rows)


NO_L2_TO_COMPARE = ("nvme.target is l1: the comparison with an emulated disk is made in L2 (the seed's chain), "
                    "and there is no L2 here")


class BenchL2Virtio(Step):
    """The same fio job in the same L2 on the virtio-blk disk L1's QEMU emulates (``bench.emulated``):
    passthrough against emulation. A scratch file the runbook made: writes need no consent, but a
    signature on it (someone used it) stops its writes."""
    label = "fio on the emulated disk in L2"

    def plan(self, ctx: Stage) -> Plan:
        from .build_l2 import VIRTIO_SERIAL
        p = ctx.params
        if not p.bench.emulated:
            return self.no_change("bench.emulated is false")
        if not p.nvme.in_l2:
            return self.no_change(NO_L2_TO_COMPARE)
        if ctx.state.get("bench_l2_virtio"):
            return self.no_change("measured already in this run (a new run id measures again)")
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        l2 = ctx.l2()
        dev = storage.virtio_by_serial(l2, VIRTIO_SERIAL)
        if dev is None:
            raise RunbookError(f"L2 has no virtio-blk disk with serial {VIRTIO_SERIAL}: L2 was defined without "
                               "the emulated disk of the comparison",
                               hint="L2 runs with a definition from before bench.emulated (a running L2 keeps "
                                    "its devices): give everything back with `--stages 99` and start a new run, "
                                    "or set bench.emulated: false")
        sig = storage.signature(l2, dev) or (storage.mounts_of(l2, dev) and "mounted")
        why = f"{dev} in L2 carries a {sig} signature: not the runbook's empty file" if sig else None
        run, left_out = fio.split_by_consent(p.bench.profiles, why is None)
        return _fio_plan(self, "L2", dev, "virtio-blk", run, left_out, why, p.bench, "root@L2",
                         f"the virtio-blk disk (serial {VIRTIO_SERIAL}, the file {paths(p).l2_virtio} in L1)")

    def apply(self, ctx: Stage, plan: Plan):
        p = ctx.params
        if not plan.changes and p.bench.emulated and not p.nvme.in_l2:  # asked for, and not measured: say so
            _skipped(ctx, "L1", "virtio-blk", list(p.bench.profiles), NO_L2_TO_COMPARE)
        if not plan.changes:
            return [no_change("L2 virtio-blk benchmark", no_change_why(plan))]
        b, (target, run, left_out, why) = ctx.params.bench, plan.data
        rows = fio.run_profiles(ctx.l2(), "L2", target, run, b.repeats, b.runtime_s, b.size_mib,
                                target_kind="virtio-blk", accel=l2_accel(ctx), iommu="none")
        _skipped(ctx, "L2", "virtio-blk", left_out, why)
        ctx.state.set("bench_l2_virtio", rows)
        return rows

    def show(self, plan: Plan, rows) -> None:
        from .. import ui
        ui.show_fio_rows(rows)


class BenchL0(Step):
    """fio on L0 on the emulated drive's backing file: the namespace's bytes as L0 sees them, before
    mkfs in L2. Reads always; writes with ``bench.l0_write_consent``."""
    label = "fio on the backing file on L0"

    def plan(self, ctx: Stage) -> Plan:
        b = ctx.params.bench
        if not b.on_l0:
            return self.no_change("bench.on_l0 is false")
        if ctx.params.nvme.host:
            return self.no_change("the physical drive was measured on L0 in stage 02, before it went to L1")
        if ctx.state.get("bench_l0"):
            return self.no_change("measured already in this run (a new run id measures again)")
        if ctx.seen.get("ns") is None:
            return self.unknown(NO_NAMESPACE)
        why = _namespace_writes(ctx, "bench.l0_write_consent", b.l0_write_consent)
        run, left_out = fio.split_by_consent(b.profiles, why is None)
        return _fio_plan(self, "L0", l0_target(ctx), "namespace", run, left_out, why, b, "root@L0",
                         "the emulated NVMe's backing file")

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            return [no_change("L0 benchmark", no_change_why(plan))]
        b, (target, run, left_out, why) = ctx.params.bench, plan.data
        rows = fio.run_profiles(ctx.l0, "L0", target, run, b.repeats, b.runtime_s, b.size_mib,
                                target_kind="namespace", accel="none", iommu="none")
        _skipped(ctx, "L0", "namespace", left_out, why)
        ctx.state.set("bench_l0", rows)
        return rows

    def show(self, plan: Plan, rows) -> None:
        from .. import ui
        ui.show_fio_rows(rows)


def _range(lo: float, hi: float, fmt: str) -> str:
    return f"{fmt.format(lo)} - {fmt.format(hi)}"


def summary_table(summary: list[dict]):
    """Like for like: one row per layer, target and profile; every figure with its spread."""
    from .. import ui
    order = {x: i for i, x in enumerate(results.SERIES_ORDER)}
    profiles = list(dict.fromkeys(x["profile"] for x in summary))  # as bench.profiles gives them
    rows = sorted(summary, key=lambda x: (order.get(fio.series_of(x), 99), profiles.index(x["profile"])))
    return ui.Table([(x["layer"], fio.TARGET_NAMES.get(x["target_kind"]), x["accel"] or "not read",
                      x["iommu"] or "not read", x["profile"], x["runs"],
                      f"{x['iops_median']:,.0f} ({_range(x['iops_min'], x['iops_max'], '{:,.0f}')})",
                      f"{x['bw_mib_s_median']:.1f} ({_range(x['bw_mib_s_min'], x['bw_mib_s_max'], '{:.1f}')})",
                      f"{x['lat_p99_us']:,.0f} ({_range(x['lat_p99_us_min'], x['lat_p99_us_max'], '{:,.0f}')})")
                     for x in rows],
                    ["layer", "target", "ran under", "IOMMU", "profile", "repeats", "IOPS median (min - max)",
                     "MiB/s median (min - max)", "p99 latency median (min - max), µs"])


def comparison_table(comparisons: list[dict]):
    """A against B per profile: the ratio of medians, its range over the repeats, the verdict."""
    from .. import ui
    return ui.Table([(c["question"].split(":")[0], fio.series_name(c["a"]["layer"], c["a"]["target_kind"]),
                      fio.series_name(c["b"]["layer"], c["b"]["target_kind"]), c["profile"],
                      f"{c['ratio_median']:.2f} x", _range(c["ratio_low"], c["ratio_high"], "{:.2f}"),
                      c["verdict"] + (f" (p = {c['p']:.3f})" if c["p"] is not None else ""))
                     for c in comparisons if c["ratio_median"] is not None],
                    ["comparison", "A", "B", "profile", "A / B in IOPS (ratio of medians)",
                     "range over repeats", "verdict"], color_by="verdict")


class Results(Step):
    """Every layer's runs, their median and spread, the comparisons with their verdicts;
    results.json, results.csv and the plot bench.png."""
    label = "Results"

    def plan(self, ctx: Stage) -> Plan:
        run_dir = ctx.state.path.parent
        return Plan(self.label, [Action("L0", f"write results.json, results.csv and bench.png in the run folder "
                                              f"{run_dir}")])

    def apply(self, ctx: Stage, plan: Plan):
        s, verdicts, files = summary(ctx)
        return (s, verdicts, files, ctx.state.path.parent, results.layers(ctx.state.data, []),
                ctx.state.get("bench_skipped") or [])

    def show(self, plan: Plan, result) -> None:
        from .. import ui
        s, verdicts, files, run_dir, layers_, skipped = result
        print("Like for like: the same fio job at every layer; the namespace as a block device (on L0 its backing "
              "file), and in L2 the virtio-blk disk L1's QEMU emulates.")
        ui._display(summary_table(s))
        if skipped:
            ui.show_table([(x["layer"], fio.TARGET_NAMES.get(x["target_kind"]), ", ".join(x["profiles"]), x["reason"])
                           for x in skipped], ["layer", "target", "not measured", "why"])
        print("Comparisons: faster or slower only when every repeat of A beat (or fell short of) every repeat "
              "of B; otherwise within noise.")
        ui._display(comparison_table(verdicts))
        print(f"results: {files['json']} and {files['csv']}")
        ui._display(results.plot(s, verdicts, layers_, run_dir))


STEPS = [Controller, Namespaces, BenchL2, BenchL2Virtio, BenchL0, Mkfs, Mount, Df, Results]
