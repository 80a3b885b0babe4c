"""The runbook on many hosts at once, driven by Ansible, with one index.

    python -m helpers fleet --inventory INVENTORY [--params BASE.yaml] [--limit PATTERN] [--forks N]
                            [--stages 01 | --from NN] [--check] [--fleet-id NAME]

Each host of a standard Ansible inventory is an L0. ``playbook.yml`` (beside this
file; ``ansible-playbook -i INVENTORY helpers/fleet/playbook.yml`` runs it too) has
two plays, both acting on this machine only (``delegate_to: localhost``):

1. ``prepare`` (linear, so every host is done before any runs): the host's
   parameters are the base file with the host's ``nested_nvme`` variable merged
   over it and ``host.ssh`` made from Ansible's own connection variables
   (:func:`host_ssh`); the merged file is checked with the runbook's schema. A
   refused host fails this play only for itself ("refused parameters").
2. ``run`` (strategy free, up to ``--forks`` hosts at a time): a quick SSH probe
   (a host that does not answer is "unreachable", not a failed stage), then one
   runner per host, ``python -m helpers run --params <merged> --outputs
   <fleet>/<host> --run-id <host>``, its output in ``<fleet>/<host>/runner.log``.

Each host's record is ``<fleet>/<host>/host.json``; ``fleet.json`` and
``index.html`` at the top are rewritten (under a lock) whenever a host ends, and
once more by the fleet command at the end. No key or password is written
anywhere: only the paths of key files.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import getpass
import html
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from .. import params as params_mod
from ..errors import RunbookError

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "playbook.yml"
ROOT = HERE.parent.parent
PARAMS_VAR = "nested_nvme"
# Ansible's variables the mapping reads (values), and the ones it only looks for (names, never values).
CONNECTION_VARS = ("ansible_connection", "ansible_host", "ansible_port", "ansible_user",
                   "ansible_ssh_private_key_file", "ansible_ssh_common_args", "ansible_ssh_extra_args",
                   "ansible_ssh_host_key_checking", PARAMS_VAR)
PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
STATUSES = ("passed", "failed", "refused parameters", "unreachable", "interrupted", "running", "not run")
UNREACHABLE = ("connection refused", "connection timed out", "timed out", "no route to host",
               "could not resolve hostname", "network is unreachable", "name or service not known",
               "temporary failure in name resolution", "connection reset", "connection closed by remote host")
RUN_ID_BAD = re.compile(r"[^A-Za-z0-9._-]")


class Refused(RunbookError):
    """A host's parameters refused before anything runs on any host."""


# --- a host's parameters -------------------------------------------------------------------------

def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _path(value, cwd: str | None = None) -> str:
    """A path as Ansible's ssh takes it: ~ expanded, relative to where ansible-playbook was started."""
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = Path(cwd or os.getcwd()) / p
    return str(p)


def _ssh_option(args: str, name: str) -> str | None:
    """The value of ``-o Name=value`` in ansible_ssh_common_args / extra_args, if given."""
    words = shlex.split(args or "")
    for i, w in enumerate(words):
        opt = w[2:] if w.startswith("-o") and len(w) > 2 else words[i + 1] if w == "-o" and i + 1 < len(words) else ""
        key, _, val = opt.partition("=")
        if key.strip().lower() == name.lower() and val.strip():
            return val.strip()
    return None


def host_ssh(host: str, hv: dict, given: dict | None = None, cwd: str | None = None) -> dict | None:
    """``host.ssh`` from Ansible's connection variables (``hv``), or None for
    ``ansible_connection: local`` (L0 is this machine). ``given``: a ``host.ssh`` the
    host's ``nested_nvme`` sets itself, which wins key by key.

    - ``ansible_host`` (default: the inventory name), ``ansible_port`` (22),
      ``ansible_user`` (this user, as Ansible's ssh does), ``ansible_ssh_private_key_file``;
    - known_hosts: ``-o UserKnownHostsFile=`` in ``ansible_ssh_common_args`` or
      ``ansible_ssh_extra_args``, else ssh's default (``~/.ssh/known_hosts``): the
      runbook checks the host key against it and never accepts one blindly;
    - none of address, port, user or key given: the inventory name is an entry of
      the user's ssh config (``config_host``), as Ansible's ssh would read it.
    """
    conn = str(hv.get("ansible_connection") or "ssh")
    if conn == "local":
        return None
    if conn not in ("ssh", "smart", "ansible.builtin.ssh", "paramiko", "ansible.builtin.paramiko_ssh"):
        raise Refused(f"host {host}: ansible_connection `{conn}`: the runbook reaches an L0 over SSH or runs on "
                      "this machine", hint="use ansible_connection ssh (the default) or local for this host")
    if given and (given.get("config_host") or given.get("address")):
        return dict(given)
    args = " ".join(str(hv.get(k) or "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    known = _ssh_option(args, "UserKnownHostsFile")
    if str(_ssh_option(args, "StrictHostKeyChecking") or "").lower() == "no" or \
            str(hv.get("ansible_ssh_host_key_checking", "")).lower() in ("false", "no", "0"):
        raise Refused(f"host {host}: the inventory turns host key checking off for it; the runbook never "
                      "accepts an unknown host key",
                      hint="add the host's key to known_hosts once (`ssh-keyscan -p PORT ADDRESS >> "
                           "~/.ssh/known_hosts`, fingerprint compared on the host's console) and remove "
                           "StrictHostKeyChecking=no / ansible_ssh_host_key_checking")
    explicit = [k for k in ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file") if hv.get(k)]
    ssh: dict = {}
    if not explicit:
        ssh["config_host"] = host
    else:
        ssh.update(address=str(hv.get("ansible_host") or host), port=int(hv.get("ansible_port") or 22),
                   user=str(hv.get("ansible_user") or getpass.getuser()))
        if hv.get("ansible_ssh_private_key_file"):
            ssh["identity"] = _path(hv["ansible_ssh_private_key_file"], cwd)
        if known:
            ssh["known_hosts"] = _path(known.split()[0], cwd)
    for k, v in (given or {}).items():  # what nested_nvme says about host.ssh wins
        ssh[k] = v
    return ssh


def secrets_in(raw, loc: tuple = ()) -> list[str]:
    """Where a mapping names a password or holds key material (the values are never shown)."""
    found = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            here = loc + (str(k),)
            if params_mod.looks_secret(k) and not isinstance(v, (dict, list)):
                found.append(".".join(here))
            else:
                found += secrets_in(v, here)
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            found += secrets_in(v, loc + (str(i),))
    elif isinstance(raw, str) and params_mod.KEY_MATERIAL.search(raw):
        found.append(".".join(loc))
    return found


def host_params(host: str, base: dict, hv: dict, password_vars: list[str] = (), cwd: str | None = None) -> dict:
    """The host's parameters: ``base`` with ``nested_nvme`` merged over it and
    ``host.ssh`` from the connection variables. Raises Refused naming what to fix;
    a password variable or a secret in ``nested_nvme`` is refused by its name only."""
    if password_vars:
        raise Refused(f"host {host}: {', '.join(password_vars)} is set for it; the runbook reaches L0 by key only "
                      "and never takes a password (the value is not shown)",
                      hint="remove it and give ansible_ssh_private_key_file (a key whose .pub is in the host's "
                           "authorized_keys)")
    over = hv.get(PARAMS_VAR) or {}
    if not isinstance(over, dict):
        raise Refused(f"host {host}: `{PARAMS_VAR}` is not a mapping of parameter sections",
                      hint=f"give `{PARAMS_VAR}:` as sections of a parameter file, e.g. `{PARAMS_VAR}: {{l1: "
                           "{name: nested-kvm-a}}`")
    if bad := secrets_in(over):
        raise Refused(f"host {host}: {PARAMS_VAR}: {', '.join(bad)} looks like a password or a key itself "
                      "(the value is not shown, and nothing was written)",
                      hint="take it out; give only the path of a key file (host.ssh.identity, l1.ssh.identity)")
    merged = merge(base, over)
    given = ((over.get("host") or {}).get("ssh")) if isinstance(over.get("host"), dict) else None
    ssh = host_ssh(host, hv, given if isinstance(given, dict) else None, cwd)
    merged.setdefault("host", {})
    if ssh is None:
        merged["host"].pop("ssh", None)
    else:
        merged["host"]["ssh"] = ssh
    return merged


def run_id_for(host: str) -> str:
    """The host's run folder name: its inventory name, as a plain folder name."""
    return RUN_ID_BAD.sub("_", host)[:100] or "host"


# --- records -------------------------------------------------------------------------------------

def host_dir(fleet_dir: Path, host: str) -> Path:
    return Path(fleet_dir) / run_id_for(host)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def record(fleet_dir: Path, host: str, **fields) -> dict:
    d = host_dir(fleet_dir, host)
    d.mkdir(parents=True, exist_ok=True)
    rec = read_json(d / "host.json")
    rec.update(host=host, **fields)
    write_json(d / "host.json", rec)
    return rec


def prepare(fleet_dir: Path, host: str, base_file: Path, hv: dict, password_vars: list[str] = (),
            round_: str = "", cwd: str | None = None) -> dict:
    """Merge and check one host's parameters into ``<fleet>/<host>/params.yaml``; its record.
    A refusal is recorded ("refused parameters") and raised."""
    d = host_dir(fleet_dir, host)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "params.yaml"
    try:
        try:
            base = params_mod._parse(Path(base_file), params_mod._read(Path(base_file)))[0]
        except params_mod.ParamsError as e:
            raise Refused(str(e), hint="fix the base parameter file (--params)") from None
        merged = host_params(host, base, hv, list(password_vars), cwd)
        out.write_text(f"# host {host} of the fleet: {base_file} with the inventory's {PARAMS_VAR} and "
                       "connection variables merged over it\n" + yaml.safe_dump(merged, sort_keys=False))
        try:
            p = params_mod.load(out)
        except params_mod.ParamsError as e:
            raise Refused(f"host {host}: its merged parameters are refused:\n{e}",
                          hint=f"fix `{PARAMS_VAR}` in the host's host_vars or group_vars (or the base file "
                               f"{base_file}); the merged file is {out}") from None
    except Refused as e:
        record(fleet_dir, host, status="refused parameters", error=e.message, hint=e.hint, round=round_,
               params=str(out) if out.exists() else None, finished=_now())
        raise Refused(e.message, e.hint) from None
    from .. import l0
    return record(fleet_dir, host, status="prepared", params=str(out), l0=l0.where(p), l1=p.l1.name,
                  error=None, hint=None, round=round_)


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


# --- a host's run --------------------------------------------------------------------------------

def probe(p) -> tuple[str, str] | None:
    """A quick SSH round trip to a remote L0: None when it answers (or L0 is this machine),
    or ("unreachable", why) when the network does not get there; any other SSH failure
    (host key, key refused) is left to the runner, which names it with its fix."""
    from .. import l0
    if not l0.remote(p):
        return None
    g = l0.guest(p)
    g.connect_timeout = 10
    r = g.run("true", timeout=30)
    if r.ok:
        return None
    said = (r.err or r.out).strip()
    if r.rc == 255 and (any(u in said.lower() for u in UNREACHABLE) or not said):
        return "unreachable", said.splitlines()[-1] if said else f"ssh exit code {r.rc}"
    return None


def run_host(fleet_dir: Path, host: str, runner_args: list[str], python: str = sys.executable) -> int:
    """The probe, then the runner for one prepared host, its output in runner.log; the record updated."""
    fleet_dir = Path(fleet_dir)
    d = host_dir(fleet_dir, host)
    rec = read_json(d / "host.json")
    if rec.get("status") == "refused parameters" or not rec.get("params"):
        return 2
    p = params_mod.load(rec["params"])
    t0 = time.monotonic()
    where = rec.get("l0", "")
    if found := probe(p):
        record(fleet_dir, host, status="unreachable", error=f"L0 ({where}) cannot be reached over SSH: {found[1]}",
               hint="check the inventory's ansible_host / ansible_port, that sshd runs on the host and that this "
                    "machine reaches it (`ssh -p PORT USER@HOST true`); then run the fleet again",
               finished=_now(), seconds=round(time.monotonic() - t0, 1), rc=None)
        write_index(fleet_dir)
        return 3
    runner_args = list(runner_args)
    if "--from" in runner_args:  # each host resumes where it stopped, if that is later
        i = runner_args.index("--from")
        start = resume_stage(d / run_id_for(host), runner_args[i + 1])
        if start is None:
            record(fleet_dir, host, status="done", rc=0, finished=_now(), seconds=0.0, error=None, hint=None,
                   note=f"every stage from {runner_args[i + 1]} on had passed already: nothing to resume")
            write_index(fleet_dir)
            return 0
        runner_args[i + 1] = start
    cmd = [python, "-m", "helpers", "run", "--params", rec["params"], "--outputs", str(d),
           "--run-id", run_id_for(host), *runner_args]
    record(fleet_dir, host, status="running", command=" ".join(shlex.quote(c) for c in cmd[1:]), started=_now(),
           run_dir=str(d / run_id_for(host)), pid=os.getpid(), error=None, hint=None, rc=None,
           mode="check" if "--check" in runner_args else "run")
    write_index(fleet_dir)
    # The runner runs in a session of its own, so that only this wrapper signals it: Ansible
    # passes Ctrl-C on as SIGINT to the worker's process group and then, when its clean-up finds
    # the worker still there, SIGTERM to the same group, which killed a runner before it could
    # record its stage (the host then stayed "running"). Here SIGINT, SIGTERM and SIGHUP all
    # become one Ctrl-C for the runner (it stops its stage and records it); the same interrupt
    # arriving by two ways at once (the fleet command's own and Ansible's) is passed on once;
    # one a second or more later is a second Ctrl-C (the runner then stops at once).
    with open(d / "runner.log", "a") as log:
        log.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True)
    record(fleet_dir, host, runner_pid=proc.pid)
    with InterruptsPassedOn(proc.pid):
        rc = proc.wait()
    record(fleet_dir, host, status="done", rc=rc, finished=_now(), seconds=round(time.monotonic() - t0, 1))
    write_index(fleet_dir)
    return rc


class InterruptsPassedOn:
    """While entered: SIGINT, SIGTERM and SIGHUP to this process become SIGINT to ``pid``, at
    most one per ``ONCE`` seconds (one interrupt that reached this process by two ways)."""

    ONCE = 1.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, pid: int):
        self.pid = pid
        self.last: float | None = None
        self.before: dict = {}

    def __enter__(self) -> "InterruptsPassedOn":
        self.before = {s: signal.signal(s, self._pass_on) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.before.items():
            signal.signal(s, handler)

    def _pass_on(self, signum, frame) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.ONCE:
            return
        self.last = now
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def interrupt_hosts(fleet_dir: Path) -> list[str]:
    """Ctrl-C straight to each running host's wrapper (which passes it on to its runner), not
    only through Ansible's workers; the hosts so reached."""
    from ..runlock import alive
    reached = []
    for host in hosts_in(fleet_dir):
        rec = read_json(host_dir(fleet_dir, host) / "host.json")
        pid = rec.get("pid") or 0
        if rec.get("status") == "running" and pid and pid != os.getpid() and alive(pid):
            try:
                os.kill(pid, signal.SIGINT)
                reached.append(host)
            except ProcessLookupError:
                pass
    return reached


def resume_stage(run_dir: Path, start: str) -> str | None:
    """The first main stage from ``start`` on that the host's run has not passed (None: all passed)."""
    from ..run.choice import MAIN_STAGES
    passed = {s["stage"] for s in read_json(run_dir / "summary.json").get("stages", []) if s.get("status") == "passed"}
    return next((s for s in MAIN_STAGES if s >= start.zfill(2) and s not in passed), None)


# --- the fleet's view ----------------------------------------------------------------------------

def _runner_error(log: Path) -> tuple[str, str]:
    """The runner's own ERROR / FAILED / INTERRUPTED lines and HINT, from the end of its log."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-60:]
    except OSError:
        return "", ""
    err, hint = [], ""
    for i, line in enumerate(lines):
        if line.startswith(("ERROR: ", "FAILED at", "INTERRUPTED at")):
            err = [line.split(": ", 1)[1] if line.startswith("ERROR: ") else line]
            for more in lines[i + 1:]:
                if more.startswith("HINT: "):
                    hint = more[6:]
                    break
                err.append(more.strip())
    return " ".join(e for e in err if e), hint


def host_view(fleet_dir: Path, host: str) -> dict:
    """One host's status, durations, checks, plans and key results, from its record and run folder."""
    d = host_dir(fleet_dir, host)
    rec = read_json(d / "host.json")
    view = {"host": host, "status": "not run", "l0": rec.get("l0"), "l1": rec.get("l1"),
            "params": rec.get("params"), "error": rec.get("error"), "hint": rec.get("hint"),
            "seconds": rec.get("seconds"), "stages": [], "checks": [], "plans": [], "results": None,
            "report": None, "run_dir": rec.get("run_dir"), "stopped_at": None, "mode": rec.get("mode", "run"),
            "round": rec.get("round", "")}
    status = rec.get("status")
    if status in ("refused parameters", "unreachable"):
        view["status"] = status
        return view
    run_dir = Path(rec["run_dir"]) if rec.get("run_dir") else d / run_id_for(host)
    stages = _run_view(view, run_dir)
    if status == "running":
        from ..runlock import alive
        if alive(rec.get("pid") or 0) or alive(rec.get("runner_pid") or 0):
            view["status"] = "running"
            return view
        status = "done"  # its wrapper is gone: killed or stopped
        if rec.get("rc") is None:
            rec["rc"] = 130
    if status == "done":
        _outcome(view, rec.get("rc"), stages, d / "runner.log")
    return view


def _run_view(view: dict, run_dir: Path) -> list[dict]:
    """Fill ``view`` from the host's run folder: stages, report, checks, plans, key results.
    Returns the summary's stages."""
    summary = read_json(run_dir / "summary.json")
    stages = summary.get("stages", [])
    view["stages"] = [{"stage": s["stage"], "status": s.get("status"), "seconds": s.get("seconds")} for s in stages]
    if (run_dir / "report.html").exists():
        view["report"] = str(run_dir / "report.html")
        view["run_dir"] = str(run_dir)
    state = read_json(run_dir / "state.json")
    view["checks"] = (state.get("host") or {}).get("checks", [])
    for s in stages:
        for st in s.get("steps", []):
            if st.get("changes") or st.get("unknown"):
                view["plans"].append({"stage": s["stage"], "step": st.get("step"), "plan": st.get("plan"),
                                      "unknown": st.get("unknown") or ""})
    view["results"] = key_results(run_dir)
    return stages


def _outcome(view: dict, rc: int | None, stages: list[dict], runner_log: Path) -> None:
    """A finished host's status, where it stopped, its error and HINT, into ``view``."""
    bad = [s for s in stages if s.get("status") not in ("passed", "not plannable")]
    interrupted = [s for s in bad if s.get("status") == "interrupted"]
    if rc == 130 or interrupted:
        view["status"] = "interrupted"
        s = interrupted[0] if interrupted else (bad[0] if bad else {})
        view["stopped_at"] = s.get("stage")
        view["error"] = s.get("error") or "interrupted (Ctrl-C / SIGINT)"
        view["hint"] = s.get("hint") or _runner_error(runner_log)[1]
    elif rc == 0 and not bad:
        view["status"] = "passed"
    else:
        view["status"] = "failed"
        if bad:
            s = bad[0]
            view["stopped_at"] = s["stage"]
            view["error"] = s.get("error") or s.get("note") or s.get("status")
            view["hint"] = s.get("hint")
        else:  # refused by the runner before stage 01 (L0's host key, libvirt over SSH, the host's resources)
            view["error"], view["hint"] = _runner_error(runner_log)
            view["error"] = view["error"] or f"the runner exited with code {rc} (see runner.log)"


def key_results(run_dir: Path) -> list[str] | None:
    """A few lines from the run's results.json (read with helpers.bench.results): L2's figures
    as a share of L1's, per profile."""
    if not (Path(run_dir) / "results.json").exists():
        return None
    from ..bench import results
    try:
        doc = results.load(Path(run_dir))
    except (RunbookError, OSError, ValueError) as e:
        return [f"results.json not readable: {getattr(e, 'message', e)}"]
    out = []
    summary = {(s.get("layer"), s.get("profile")): s for s in doc.get("summary", [])}
    for rel in doc.get("l2_vs_l1", []):
        l2 = summary.get(("L2", rel.get("profile")), {})
        out.append(f"{rel.get('profile')}: L2 {l2.get('iops_mean', 0):,.0f} IOPS, {rel.get('iops_pct', 0):.0f} % "
                   f"of L1's")
    return out or ["results.json has no L2 figures"]


def hosts_in(fleet_dir: Path) -> list[str]:
    return sorted(read_json(p).get("host") or p.parent.name for p in Path(fleet_dir).glob("*/host.json"))


def fleet_view(fleet_dir: Path) -> dict:
    fleet_dir = Path(fleet_dir)
    meta = read_json(fleet_dir / "fleet-meta.json")
    hosts = [host_view(fleet_dir, h) for h in hosts_in(fleet_dir)]
    counts = {s: sum(h["status"] == s for h in hosts) for s in STATUSES}
    with_results = [h["run_dir"] for h in hosts if h["results"] and h["run_dir"]]
    compare = ("python -m helpers compare " + " ".join(shlex.quote(os.path.relpath(r, ROOT)
                                                                   if r.startswith(str(ROOT)) else r)
                                                       for r in with_results)) if len(with_results) >= 2 else None
    if not meta.get("mode"):  # the playbook run by hand: the hosts' own runs say it
        meta["mode"] = "check" if hosts and all(h["mode"] == "check" for h in hosts if h["status"] in ("passed", "failed", "interrupted", "running")) \
            else "run"
    return {"fleet_id": fleet_dir.name.removeprefix("fleet-"), "folder": str(fleet_dir), **meta,
            "written": _now(), "hosts": hosts, "counts": {k: v for k, v in counts.items() if v},
            "passed": bool(hosts) and all(h["status"] == "passed" for h in hosts), "compare": compare,
            "resume": resume_command(meta, hosts)}


def resume_command(meta: dict, hosts: list[dict]) -> str | None:
    """The one fleet command that resumes every host that stopped (each from where it stopped)."""
    stopped = [h["stopped_at"] for h in hosts if h["status"] in ("failed", "interrupted") and h["stopped_at"]
               and h["stopped_at"] != "99" and h.get("mode") != "check"]
    if not stopped or not meta.get("inventory"):
        return None
    cmd = ["python", "-m", "helpers", "fleet", "--inventory", meta["inventory"]]
    if meta.get("params"):
        cmd += ["--params", meta["params"]]
    cmd += ["--fleet-id", meta.get("fleet_id", ""), "--from", min(stopped)]
    return " ".join(shlex.quote(c) for c in cmd)


@contextlib.contextmanager
def _locked(fleet_dir: Path):
    with open(Path(fleet_dir) / ".index.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_index(fleet_dir: Path) -> dict:
    """fleet.json and index.html, rewritten whole under the fleet's lock."""
    fleet_dir = Path(fleet_dir)
    with _locked(fleet_dir):
        view = fleet_view(fleet_dir)
        write_json(fleet_dir / "fleet.json", view)
        tmp = fleet_dir / f"index.html.{os.getpid()}.tmp"
        tmp.write_text(render_index(view, fleet_dir))
        tmp.replace(fleet_dir / "index.html")
    return view


# --- index.html ----------------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:.3em .6em;vertical-align:top;text-align:left}th{background:#eee}
.passed,.pass{background:#d9f2d9}.failed,.fail,.refused{background:#f8d7d7}.unreachable{background:#eee0f8}
.interrupted,.warn,.running{background:#fff1c4}.skip{background:#f2f2f2}code{background:#f4f4f4;padding:0 .2em}
small{color:#555}"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _status_text(h: dict) -> str:
    if h["status"] == "failed" and h["stopped_at"]:
        return f"failed at stage {h['stopped_at']}"
    if h["status"] == "interrupted" and h["stopped_at"]:
        return f"interrupted at stage {h['stopped_at']}"
    return h["status"]


def _seconds(s) -> str:
    return "" if s is None else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _link(path: str | None, fleet_dir: Path, text: str) -> str:
    if not path:
        return ""
    return f'<a href="{_e(os.path.relpath(path, fleet_dir))}">{_e(text)}</a>'


def render_index(view: dict, fleet_dir: Path) -> str:
    hosts = view["hosts"]
    counts = ", ".join(f"{n} {s}" for s, n in view["counts"].items()) or "no hosts"
    mode = view.get("mode", "run")
    title = f"Fleet {view['fleet_id']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{_e(title)}</h1>",
             (f"<p>Inventory <code>{_e(view.get('inventory'))}</code>, base parameters <code>{_e(view.get('params'))}"
              f"</code>, stages {_e(view.get('stages'))}" if view.get("inventory") else
              "<p>Run by ansible-playbook directly")
             + f"{' (check mode: planned, nothing changed)' if mode == 'check' else ''}. Written {_e(view['written'])}.</p>",
             f"<p><b>{'All hosts passed' if view['passed'] else 'Not every host passed'}</b>: {_e(counts)}.</p>"]
    parts.append("<h2>Hosts</h2><table><tr><th>host</th><th>L0</th><th>L1</th><th>status</th><th>error and HINT</th>"
                 "<th>duration</th><th>stages</th><th>report</th><th>key results</th></tr>")
    for h in hosts:
        cls = "refused" if h["status"] == "refused parameters" else h["status"].replace(" ", "-")
        stages = "<br>".join(f"{_e(s['stage'])} {_e(s['status'])} {_e(_seconds(s['seconds']))}" for s in h["stages"])
        err = _e(h["error"]).replace("\n", "<br>") + (f"<br><b>HINT:</b> {_e(h['hint'])}" if h["hint"] else "")
        res = "<br>".join(_e(r) for r in h["results"] or [])
        parts.append(f"<tr><td>{_e(h['host'])}</td><td>{_e(h['l0'])}</td><td>{_e(h['l1'])}</td>"
                     f"<td class='{cls}'>{_e(_status_text(h))}</td><td>{err}</td><td>{_e(_seconds(h['seconds']))}</td>"
                     f"<td>{stages}</td><td>{_link(h['report'], fleet_dir, 'report.html')}"
                     f"{'<br>' + _link(str(host_dir(fleet_dir, h['host']) / 'runner.log'), fleet_dir, 'runner.log') if (host_dir(fleet_dir, h['host']) / 'runner.log').exists() else ''}"
                     f"</td><td>{res}</td></tr>")
    parts.append("</table>")
    if any(h["checks"] for h in hosts):
        parts.append(render_matrix(hosts))
    if mode == "check":
        parts.append("<h2>Planned changes</h2>")
        for h in hosts:
            if h["status"] in ("refused parameters", "unreachable"):
                continue
            items = "".join(f"<li>stage {_e(p['stage'])}, {_e(p['step'])}: {_e(p['plan'])}"
                            f"{' <i>(' + _e(p['unknown']) + ')</i>' if p['unknown'] else ''}</li>" for p in h["plans"])
            parts.append(f"<h3>{_e(h['host'])}</h3><ul>{items or '<li>no change</li>'}</ul>")
    if view.get("compare"):
        parts.append(f"<h2>Comparing the hosts' fio results</h2><p><code>{_e(view['compare'])}</code></p>")
    if view.get("resume"):
        parts.append(f"<h2>Resuming</h2><p>Each stopped host resumes from where it stopped:<br>"
                     f"<code>{_e(view['resume'])}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_matrix(hosts: list[dict]) -> str:
    """Hosts by checks: each cell the verdict (with what was observed); a failed one with its fix."""
    names: list[str] = []
    for h in hosts:
        for c in h["checks"]:
            if c["name"] not in names:
                names.append(c["name"])
    out = ["<h2>Readiness (stage 01's checks)</h2><table><tr><th>host</th><th>ready</th>"
           + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"]
    for h in hosts:
        by = {c["name"]: c for c in h["checks"]}
        if h["status"] in ("refused parameters", "unreachable") or not by:
            out.append(f"<tr><td>{_e(h['host'])}</td><td class='{'refused' if 'refused' in h['status'] else h['status']}'>"
                       f"{_e(h['status'])}</td><td colspan='{len(names)}'>{_e(h['error'])}</td></tr>")
            continue
        ready = all(c["verdict"] != "fail" for c in by.values())
        cells = []
        for n in names:
            c = by.get(n)
            if c is None:
                cells.append("<td>not checked</td>")
                continue
            fix = f"<br><b>fix:</b> {_e(c.get('fix'))}" if c["verdict"] == "fail" and c.get("fix") else ""
            cells.append(f"<td class='{_e(c['verdict'])}'>{_e(c['verdict'])}<br><small>{_e(c.get('observed'))}"
                         f"</small>{fix}</td>")
        out.append(f"<tr><td>{_e(h['host'])}</td><td class='{'pass' if ready else 'fail'}'>"
                   f"{'ready' if ready else 'not ready'}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)
