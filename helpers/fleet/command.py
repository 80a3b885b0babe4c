"""``python -m helpers fleet``: the playbook through ansible-playbook, then the index.

ansible-playbook rather than ansible-runner: the fleet needs from Ansible its
inventory (groups, host_vars, group_vars, --limit), its forks and its free
strategy, not its event stream (each host's outcome is the runbook's own record
in ``<fleet>/<host>/``); ansible-playbook is in ansible-core, so the same command
a user types runs here, with one dependency fewer than ansible-runner (which would
also run ansible in a pseudo-terminal of its own, between Ctrl-C and the runners).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from .. import params as params_mod
from ..errors import RunbookError
from . import PLAYBOOK, ROOT, host_dir, hosts_in, interrupt_hosts, read_json, write_index, write_json

OUTPUTS = ROOT / "outputs"


def ansible_playbook() -> str:
    """ansible-playbook beside this Python (the venv's), or on PATH."""
    here = Path(sys.executable).parent / "ansible-playbook"
    found = str(here) if here.exists() else shutil.which("ansible-playbook")
    if not found:
        raise RunbookError("ansible-playbook is not installed for this Python",
                           hint="`make setup` installs ansible-core into .venv (or `pip install ansible-core`)")
    return found


def fleet_dir_for(outputs: Path, fleet_id: str | None, resume: bool, check: bool) -> Path:
    """The fleet's folder: --fleet-id, or the latest fleet when resuming (--from, --stages), or a new one."""
    from ..run.folders import check_outputs, check_run_id, new_run_id
    check_outputs(outputs)
    latest = outputs / "fleet-latest"
    if fleet_id:
        check_run_id(fleet_id)
        d = outputs / f"fleet-{fleet_id}"
        if check and d.exists():
            raise RunbookError(f"--fleet-id {fleet_id}: {d} exists; a check never writes into an earlier fleet: "
                               "give a new name, or leave --fleet-id out")
    elif resume and not check and latest.exists():
        d = latest.resolve()
    else:
        stamp = new_run_id() + ("-check" if check else "")
        d, n = outputs / f"fleet-{stamp}", 1
        while d.exists():
            d, n = outputs / f"fleet-{stamp}-{n}", n + 1
    d.mkdir(parents=True, exist_ok=True)
    if not check:
        if latest.is_symlink():
            latest.unlink()
        if not latest.exists():
            latest.symlink_to(d.name)
    return d


def runner_args(args, chosen: list[str]) -> list[str]:
    out = []
    if args.stages:
        out += ["--stages", ",".join(chosen)]
    elif args.start:
        out += ["--from", chosen[0]]
    if args.check:
        out.append("--check")
    out += ["--cell-timeout", str(args.cell_timeout), "--quiet"]
    return out


def fleet(args) -> int:
    try:
        inventory, base, chosen, playbook, d = fleet_inputs(args)
    except (params_mod.ParamsError, RunbookError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    meta = start_round(args, d, inventory, base, chosen)
    cmd = [playbook, "-i", str(inventory), str(PLAYBOOK), "-f", str(args.forks), "-e", f"@{d / 'extra-vars.json'}"]
    if args.limit:
        cmd += ["-l", args.limit]
    print(f"fleet {meta['fleet_id']}: stages {', '.join(chosen)} on {inventory.name}"
          f"{' (check mode: nothing changed)' if args.check else ''} -> {d}\n$ {' '.join(cmd)}", flush=True)
    rc, interrupted = run_playbook(cmd, d)
    return report(args, d, meta["round"], inventory, rc, interrupted)


def fleet_inputs(args) -> tuple[Path, Path, list[str], str, Path]:
    """The command line checked: (inventory, base parameters, stages, ansible-playbook, fleet folder)."""
    from ..run.choice import pick_stages, stages
    inventory = Path(args.inventory).resolve()
    if not inventory.exists():
        raise RunbookError(f"--inventory {args.inventory}: no such file or folder",
                           hint="give an Ansible inventory (YAML or INI, or a folder with host_vars/, "
                                "group_vars/), e.g. `--inventory fleet/hosts.yml`")
    base = Path(args.params).resolve()
    params_mod.load(base)  # the base file alone must be valid; each host's merge is checked by the playbook
    chosen = pick_stages(stages(), args.stages, args.start)
    if args.forks < 1:
        raise RunbookError(f"--forks {args.forks}: give how many hosts run at once, 1 or more")
    playbook = ansible_playbook()
    d = fleet_dir_for(Path(args.outputs).resolve(), args.fleet_id, bool(args.stages or args.start), args.check)
    return inventory, base, chosen, playbook, d


def start_round(args, d: Path, inventory: Path, base: Path, chosen: list[str]) -> dict:
    """This invocation on record: fleet-meta.json (with its round) and the playbook's extra-vars.json."""
    meta = read_json(d / "fleet-meta.json")
    meta.update(fleet_id=d.name.removeprefix("fleet-"), inventory=str(inventory), params=str(base),
                stages=",".join(chosen), mode="check" if args.check else "run", forks=args.forks,
                limit=args.limit, started=datetime.now().isoformat(timespec="seconds"))
    meta["round"] = f"{meta['started']}-{os.getpid()}"  # this invocation: its hosts' records carry it
    write_json(d / "fleet-meta.json", meta)
    extra = {"fleet_dir": str(d), "fleet_base_params": str(base), "fleet_python": sys.executable,
             "fleet_round": meta["round"], "fleet_cwd": os.getcwd(),
             "fleet_runner_args": runner_args(args, chosen)}
    write_json(d / "extra-vars.json", extra)
    return meta


def run_playbook(cmd: list[str], d: Path) -> tuple[int, bool]:
    """ansible-playbook to its end, Ctrl-C passed on; returns (exit code, interrupted)."""
    env = dict(os.environ, ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_LOCALHOST_WARNING="false",
               PYTHONPATH=str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    env.setdefault("ANSIBLE_NOCOLOR", "true")
    # ansible-playbook in a process group of its own: Ctrl-C here is passed on to it and to
    # every host's runner (they stop their stage and record it), and then this waits for them.
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, start_new_session=True)
    interrupted = False

    def forward(signum, frame):
        nonlocal interrupted
        interrupted = True
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        interrupt_hosts(d)  # straight to each host's runner too: Ansible's way can lose it

    before = signal.signal(signal.SIGINT, forward)
    try:
        rc = proc.wait()
        if interrupted:
            wait_for_hosts(d, timeout=120)
    finally:
        signal.signal(signal.SIGINT, before)
    return rc, interrupted


def report(args, d: Path, round_: str, inventory: Path, rc: int, interrupted: bool) -> int:
    """The index written, this invocation's hosts summed up; the fleet's exit code."""
    view = write_index(d)
    # this invocation's hosts (--limit leaves the others' records as they were)
    mine = [h for h in view["hosts"] if h["round"] == round_]
    if not mine:
        print(f"ERROR: ansible-playbook ran no host (exit code {rc}): read its output above "
              f"(the inventory {inventory}, --limit {args.limit or '(none)'})", file=sys.stderr)
        return 2
    print(summary_table({**view, "hosts": mine}))
    print(f"\nindex:  {d / 'index.html'}\nfleet:  {d / 'fleet.json'}")
    if view.get("compare"):
        print(f"compare the hosts' fio results: {view['compare']}")
    if view.get("resume"):
        print(f"HINT: resume every stopped host: {view['resume']}", file=sys.stderr)
    if interrupted or any(h["status"] == "interrupted" for h in mine):
        print("\nINTERRUPTED: each host stopped its stage and recorded it; the index says where", file=sys.stderr)
        return 130
    return 0 if all(h["status"] == "passed" for h in mine) else 1


def wait_for_hosts(d: Path, timeout: float) -> None:
    """After Ctrl-C: give each host's runner the time to stop its stage and write its record."""
    import time
    from ..runlock import alive
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        recs = [read_json(host_dir(d, h) / "host.json") for h in hosts_in(d)]
        running = [r for r in recs if r.get("status") == "running"
                   and (alive(r.get("pid") or 0) or alive(r.get("runner_pid") or 0))]
        if not running:
            return
        time.sleep(0.5)


def summary_table(view: dict) -> str:
    from . import _status_text
    rows = [("host", "L0", "status", "duration", "error / HINT")]
    for h in view["hosts"]:
        why = (h["error"] or "").splitlines()[0][:100] if h["error"] else ""
        if h["hint"]:
            why += f" | HINT: {h['hint'][:100]}"
        rows.append((h["host"], h["l0"] or "", _status_text(h), f"{h['seconds']:.0f} s" if h["seconds"] else "", why))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def host_main(argv: list[str] | None = None) -> int:
    """``python -m helpers.fleet prepare|run|index``: what the playbook calls for one host."""
    import argparse
    from . import Refused, prepare, run_host
    ap = argparse.ArgumentParser(prog="python -m helpers.fleet")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare")
    pr.add_argument("--fleet-dir", required=True)
    pr.add_argument("--host", required=True)
    pr.add_argument("--base", required=True)
    pr.add_argument("--vars", default="{}")
    pr.add_argument("--password-vars", default="")
    pr.add_argument("--round", default="", help="the fleet command's invocation (its start time)")
    pr.add_argument("--cwd", default=None, help="where ansible-playbook was started (relative key paths)")
    ru = sub.add_parser("run")
    ru.add_argument("--fleet-dir", required=True)
    ru.add_argument("--host", required=True)
    ru.add_argument("runner_args", nargs=argparse.REMAINDER)
    ix = sub.add_parser("index")
    ix.add_argument("--fleet-dir", required=True)
    a = ap.parse_args(argv)
    d = Path(a.fleet_dir)
    if a.cmd == "prepare":
        try:
            prepare(d, a.host, Path(a.base), json.loads(a.vars or "{}"),
                    [v for v in a.password_vars.split(",") if v], a.round, a.cwd or None)
        except Refused as e:
            write_index(d)
            print(f"refused parameters: {e}", file=sys.stderr)
            return 2
        write_index(d)
        return 0
    if a.cmd == "run":
        args = a.runner_args[1:] if a.runner_args[:1] == ["--"] else a.runner_args
        rc = run_host(d, a.host, args)
        rec = read_json(d / a.host / "host.json")
        if rc:
            print(f"{a.host}: {rec.get('status')}, exit code {rc}: {rec.get('error') or 'see runner.log'}",
                  file=sys.stderr)
        return rc
    write_index(d)
    return 0
