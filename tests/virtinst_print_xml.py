"""Run the real virt-install (Debian's virtinst) on several command lines: reads a JSON list
of argument lists on stdin, writes a JSON list of {"rc", "out", "err"}. virtinst is imported
once, then each command line runs in a forked child (a fresh process state each, as separate
virt-install runs would have, at a fraction of the start-up time). Run by the interpreter
virtinst is installed for (/usr/bin/python3), as /usr/bin/virt-install is."""
import contextlib
import io
import json
import os
import sys

sys.path.insert(0, "/usr/share/virt-manager")
from virtinst import virtinstall  # noqa: E402


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["virt-install", *argv]
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = virtinstall.main() or 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # virt-install's runcli reports these and exits 1
            print(f"ERROR {e}", file=sys.stderr)
            rc = 1
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}


def _fork(argv) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        with os.fdopen(w, "w") as f:
            json.dump(_main(argv), f)
        os._exit(0)
    os.close(w)
    return pid, r


def print_xml_all(argvs, parallel=4):
    """Each command line in its own child, ``parallel`` at a time, results in order."""
    results, running, todo = {}, {}, list(enumerate(argvs))
    while todo or running:
        while todo and len(running) < parallel:
            i, argv = todo.pop(0)
            running[i] = _fork(argv)
        i = next(iter(running))
        pid, r = running.pop(i)
        with os.fdopen(r) as f:
            text = f.read()
        os.waitpid(pid, 0)
        results[i] = json.loads(text) if text else {"rc": 1, "out": "", "err": "virt-install's child died"}
    return [results[i] for i in range(len(argvs))]


if __name__ == "__main__":
    from virtinst import OSDB
    OSDB.list_os()  # libosinfo's database, read once before the children fork (read-only)
    json.dump(print_xml_all(json.load(sys.stdin)), sys.stdout)
