"""The command line: run stages with papermill into a run folder.

    python -m helpers run --params parameters/lab.yaml [--stages 01,02] [--from 03] [--check]

Each stage notebook runs headless into ``outputs/<run-id>/NN_stage.ipynb``
with the parameter file and the run's state file. The first failing stage
stops the run with a short summary and a HINT; ``summary.json`` and
``report.html`` are always written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import params as params_mod
from ..errors import RunbookError
from ..params.fit import check_fit
from . import ROOT
from .choice import NOTEBOOKS, pick_stages, stages
from .execute_stages import run_locked
from .folders import OUTPUTS, check_outputs, check_run_id, run_dir_for

DEFAULT_PARAMS = ROOT / "parameters" / "lab.yaml"


def run(args) -> int:
    params_file = Path(args.params).resolve()
    try:
        available = stages(Path(args.notebooks))
        chosen = pick_stages(available, args.stages, args.start)
        check_outputs(Path(args.outputs))
        check_run_id(args.run_id, Path(args.outputs))
        if args.check and args.run_id and (Path(args.outputs) / args.run_id).exists():
            raise RunbookError(f"--run-id {args.run_id}: {Path(args.outputs) / args.run_id} exists; a check run "
                               "never writes into an earlier run: give a new name, or leave --run-id out")
        p = params_mod.load(params_file)
        try:
            check_fit(p, params_file, chosen)
        except params_mod.ParamsError as e:
            if not args.check:
                raise
            # check mode changes nothing, so it goes on: each step's plan shows what these would stop
            print(f"NOTE: a run would be refused on this host:\n{e}\ncheck mode goes on to show every step's "
                  "plan; the steps these concern say so", flush=True)
    except (params_mod.ParamsError, RunbookError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.check and args.teardown_on_failure:
        print("ERROR: --check changes nothing, so it tears nothing down: leave out --teardown-on-failure",
              file=sys.stderr)
        return 2
    from ..runlock import L1Lock
    try:  # before the run folder exists: a refused run leaves nothing behind
        lock = L1Lock(p.l1.name, args.run_id or "(starting)", str(params_file)).acquire()
    except RunbookError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    try:
        run_dir = run_dir_for(Path(args.outputs), args.run_id, resume=bool(args.stages or args.start),
                              check=args.check)
        lock.name_run(run_dir.name)
        return run_locked(args, p, params_file, available, chosen, run_dir, lock)
    finally:
        lock.release()


def check_params(args) -> int:
    """Validate a parameter file; unless --schema-only, against this host too."""
    try:
        p = params_mod.load(args.params)
        if not args.schema_only:
            check_fit(p, args.params)
    except (params_mod.ParamsError, RunbookError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.schema_only:
        print(f"{args.params}: valid for the schema; not checked against this host "
              f"(to check it: python -m helpers check-params {args.params})")
    else:
        print(f"{args.params}: valid, and this host can run it (CPUs, memory, files, free space, biggest file, "
              "SSH port)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, refusing a bad command line in one line (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"ERROR: {message}: see `{self.prog} --help`\n")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number of seconds above 0")
    return n


def compare(args) -> int:
    from ..bench import compare as compare_mod
    return compare_mod.main(args.runs, None if args.no_plot else args.plot)


def fleet(args) -> int:
    from ..fleet.command import fleet as fleet_command
    return fleet_command(args)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m helpers", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", metavar="{run,check-params,compare,fleet}")
    r = sub.add_parser("run", help="run stages with papermill into outputs/<run-id>/")
    r.add_argument("--params", default=str(DEFAULT_PARAMS), help="parameter file (default: the lab)")
    r.add_argument("--stages", help="comma-separated stages, in order, e.g. 01,02 or 99 (resumes the latest run)")
    r.add_argument("--from", dest="start", help="run from this main stage on (resumes the latest run)")
    r.add_argument("--run-id", help="run folder name under outputs/ to create or resume (a plain name)")
    r.add_argument("--outputs", default=str(OUTPUTS), help="where run folders go")
    r.add_argument("--notebooks", default=str(NOTEBOOKS), help=argparse.SUPPRESS)
    r.add_argument("--cell-timeout", type=_positive, default=3600, help="seconds any one cell may take")
    r.add_argument("--teardown-on-failure", action="store_true", help="run stage 99 when a stage fails")
    r.add_argument("-q", "--quiet", action="store_true", help="do not stream the notebooks' cell output")
    r.add_argument("--check", action="store_true",
                   help="check mode: plan and show every step, change nothing (a new run folder of its own)")
    r.set_defaults(func=run)
    c = sub.add_parser("check-params", help="validate a parameter file, and against this host, then exit")
    c.add_argument("params")
    c.add_argument("--schema-only", action="store_true", help="check the file alone, not against this host")
    c.set_defaults(func=check_params)
    m = sub.add_parser("compare", help="put several runs' results side by side; say what makes them incomparable")
    m.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (outputs/<run-id>), two or more")
    m.add_argument("--plot", default="compare.png", help="where to write the plots (default: compare.png)")
    m.add_argument("--no-plot", action="store_true", help="print the tables only")
    m.set_defaults(func=compare)
    f = sub.add_parser("fleet", help="run the runbook on every host of an Ansible inventory, in parallel, "
                                     "with one index (helpers/fleet)")
    f.add_argument("--inventory", required=True, help="an Ansible inventory (YAML or INI, host_vars/, group_vars/)")
    f.add_argument("--params", default=str(DEFAULT_PARAMS), help="the base parameter file; each host's "
                   "`nested_nvme` variable is merged over it (default: the lab)")
    f.add_argument("--limit", help="Ansible's host pattern: only these hosts")
    f.add_argument("--forks", type=int, default=5, help="how many hosts run at once (default: 5)")
    f.add_argument("--stages", help="comma-separated stages for every host, e.g. 01 (a readiness matrix) or 99")
    f.add_argument("--from", dest="start", help="resume every host of the latest fleet from this stage on "
                   "(each from where it stopped, if later)")
    f.add_argument("--check", action="store_true", help="check mode on every host: each host's planned changes")
    f.add_argument("--fleet-id", help="the fleet's folder name under --outputs (fleet-NAME), to create or resume")
    f.add_argument("--outputs", default=str(OUTPUTS), help="where fleet folders go")
    f.add_argument("--cell-timeout", type=_positive, default=3600, help="seconds any one cell may take")
    f.set_defaults(func=fleet)
    args = ap.parse_args(argv)
    if args.cmd is None:
        print("ERROR: no command: type `python -m helpers run` (stages 01-05 on parameters/lab.yaml), "
              "`python -m helpers check-params FILE` or `python -m helpers compare RUN_DIR RUN_DIR`", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
