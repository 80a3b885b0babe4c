"""Stage 05: in the layer that holds the NVMe (L2, or L1 with nvme.target l1), what the seed checks after "登录L2-kvm", then fio on each layer: ``STEPS``."""
from __future__ import annotations

from datetime import datetime

from .. import by_hand, execute
from ..bench import fio, results
from ..errors import RunbookError
from ..nb import Stage
from ..ops import Change, did, no_change
from ..checks.passthrough import l2_controller, l2_namespaces
from ..facts import storage
from ..ops import verify
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


def df(ctx: Stage) -> tuple[dict, str]:
    info, out = storage.df(ctx.holder(), ctx.params.verify.mount_point)
    if info["type"] != "xfs":
        raise RunbookError(f"{ctx.params.verify.mount_point} in {ctx.holder_name} is {info['type']}, not xfs")
    ctx.state.update("l2_verify", df=info)
    return info, out


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


# --- the steps ---------------------------------------------------------------------------------

def _l2_not_up(ctx: Stage) -> str | None:
    """Why the layer that holds the NVMe cannot be read yet (L2, or L1 with nvme.target l1), or None."""
    if not ctx.params.nvme.in_l2:
        from .build_l1 import l1_not_up
        return l1_not_up(ctx)
    from .build_l2 import _l2_not_up
    return _l2_not_up(ctx)


NO_NAMESPACE = "L2's namespace is read (step '`nvme list` in L2': L2 runs)"


class Controller(Step):
    label = "The controller in L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        return self.reads("lspci -Dnn in L2")

    def apply(self, ctx: Stage, plan: Plan):
        self.layer = ctx.holder_name  # for show(): the prompt of the layer that holds the NVMe
        return controller(ctx)

    def show(self, result) -> None:
        from .. import ui
        ctrl, _ = result
        print(f"{getattr(self, 'layer', 'L2')} sees an NVMe controller [{ctrl.ids}], class {ctrl.pci_class}")
        ui.show_output("lspci -Dnn | grep NVM", ctrl.line, prompt=f"root@{getattr(self, 'layer', 'L2')}")


class Namespaces(Step):
    label = "`nvme list` in L2"
    reads_only = True

    def plan(self, ctx: Stage) -> Plan:
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        return self.reads(f"nvme list in {ctx.holder_name} (the namespace with serial {host_nvme.serial(ctx)})")

    def apply(self, ctx: Stage, plan: Plan):
        self.layer = ctx.holder_name  # for show(): the prompt of the layer that holds the NVMe
        ctx.seen["ns"], table = namespaces(ctx)
        return ctx.seen["ns"], table

    def show(self, result) -> None:
        from .. import ui
        ns, table = result
        ui.show_output("nvme list", table, prompt=f"root@{getattr(self, 'layer', 'L2')}")
        ui.show_table([(ns["device"], ns["model"], ns["serial"], f"{ns['size_bytes'] / 1e9:.2f} GB", ns["sector_size"])],
                      ["device", "model", "serial", "size", "sector size"])


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
        self.layer = ctx.holder_name  # for show(): the prompt of the layer that holds the NVMe
        if not plan.changes:
            ch, out = no_change("mkfs.xfs", no_change_why(plan)), ""
        else:
            ch, out = verify.apply_xfs(ctx.holder(), *plan.data)
        ctx.state.update("l2_verify", mkfs=ch.detail)
        return ch, out

    def show(self, result) -> None:
        from .. import ui
        ch, out = result
        ui.show_changes([ch])
        if out:
            ui.show_output(f"mkfs.xfs -f {ch.what.split()[-1]}", out, prompt=f"root@{getattr(self, 'layer', 'L2')}")


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
        return self.reads(f"df -Th {ctx.params.verify.mount_point} in {ctx.holder_name}")

    def apply(self, ctx: Stage, plan: Plan):
        self.layer = ctx.holder_name  # for show(): the prompt of the layer that holds the NVMe
        return df(ctx)

    def show(self, result) -> None:
        from .. import ui
        ui.show_output(f"df -Th {result[0]['mounted_on']}", result[1], prompt=f"root@{getattr(self, 'layer', 'L2')}")


class BenchL2(Step):
    """fio in L2 on a file of the new XFS (direct I/O): the passed-through disk as used.
    Once per run, like the L1 baseline: a rerun keeps the figures (a new run measures again)."""
    label = "Run fio in L2"

    def plan(self, ctx: Stage) -> Plan:
        if ctx.state.get("bench_l2"):
            return self.no_change("measured already in this run (a new run id measures again)")
        if why := _l2_not_up(ctx):
            return self.unknown(why)
        if not (ctx.state.get("l2_verify") or {}).get("mounted"):
            return self.unknown(f"the namespace is mounted at {ctx.params.verify.mount_point} (step 'Mount')")
        b = ctx.params.bench
        target = ctx.params.verify.mount_point.rstrip("/") + "/fio-bench.bin"
        cmd = by_hand.fio(target, fio.fio_command(target, list(b.profiles), b.runtime_s, b.size_mib), b.repeats,
                          f"root@{ctx.holder_name}").commands
        return Plan(self.label, [Action(ctx.holder_name, f"run fio on {target} in {ctx.holder_name}'s XFS (writes a {b.size_mib} MiB file)", cmd)],
                    data=target)

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            return [no_change("L2 benchmark", no_change_why(plan))]
        b = ctx.params.bench
        rows = fio.run_profiles(ctx.holder(), ctx.holder_name, plan.data, list(b.profiles), b.repeats, b.runtime_s, b.size_mib)
        ctx.state.set("bench_l2", rows)
        return rows


class BenchL0(Step):
    """fio on the host, on a scratch file beside the backing file (never on the backing file: L2 uses it)."""
    label = "Run fio on the host"

    def plan(self, ctx: Stage) -> Plan:
        b = ctx.params.bench
        if not b.on_l0:
            return self.no_change("bench.on_l0 is false")
        if ctx.params.nvme.host:
            return self.no_change("the physical drive was measured on L0 in stage 02, before it went to L1")
        if ctx.state.get("bench_l0"):
            return self.no_change("measured already in this run (a new run id measures again)")
        target = str(paths(ctx.params).l0_bench)
        cmd = by_hand.fio(target, fio.fio_command(target, list(b.profiles), b.runtime_s, b.size_mib), b.repeats,
                          "root@L0").commands
        return Plan(self.label, [Action("L0", f"run fio on the scratch file {target} (writes {b.size_mib} MiB)", cmd)],
                    data=target)

    def apply(self, ctx: Stage, plan: Plan):
        if not plan.changes:
            return [no_change("L0 benchmark", no_change_why(plan))]
        b = ctx.params.bench
        ctx.state.remember_created("files", plan.data)
        rows = fio.run_profiles(ctx.l0, "L0", plan.data, list(b.profiles), b.repeats, b.runtime_s, b.size_mib)
        ctx.state.set("bench_l0", rows)
        return rows


class Results(Step):
    """Every layer's runs, their mean and spread, L2 as a share of L1; results.json and results.csv."""
    label = "Results"

    def plan(self, ctx: Stage) -> Plan:
        run_dir = ctx.state.path.parent
        return Plan(self.label, [Action("L0", f"write results.json and results.csv in the run folder {run_dir}")])

    def apply(self, ctx: Stage, plan: Plan):
        return summary(ctx) + (ctx.state.path.parent,)

    def show(self, result) -> None:
        from .. import ui
        s, relative, files, run_dir = result
        ui.show_table([(x["layer"], x["profile"], x["runs"], f"{x['iops_mean']:,.0f}", f"{x['iops_stdev']:,.0f}",
                        f"{x['iops_min']:,.0f} - {x['iops_max']:,.0f}", f"{x['bw_mib_s_mean']:.1f}",
                        f"{x['lat_p50_us']:.0f} / {x['lat_p99_us']:.0f} / {x['lat_p999_us']:.0f}") for x in s],
                      ["layer", "profile", "runs", "IOPS mean", "stdev", "min - max", "MiB/s",
                       "latency p50 / p99 / p99.9 (us)"])
        ui.show_table([(r["profile"], f"{r['iops_pct']:.0f} %", f"{r['bw_pct']:.0f} %") for r in relative],
                      ["profile", "L2 IOPS as % of L1", "L2 bandwidth as % of L1"])
        print(f"results: {files['json']} and {files['csv']}")
        results.plot(s, run_dir)


STEPS = [Controller, Namespaces, Mkfs, Mount, Df, BenchL2, BenchL0, Results]
