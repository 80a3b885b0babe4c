"""A small in-memory machine for unit tests of operations: files, installed
programs, and a log of the commands run. Not used by any end-to-end test."""
from __future__ import annotations

import re
import shlex

from helpers.guest import Guest, Result


class Machine(Guest):
    def __init__(self, files=None, programs=(), answers=None, name="fake"):
        self.files = dict(files or {})
        self.programs = set(programs)
        self.answers = dict(answers or {})  # regex -> Result | str | callable(cmd) -> Result
        self.log: list[str] = []
        self.name = name

    def _run(self, cmd, timeout, input):
        self.log.append(cmd)
        m = re.fullmatch(r"cat > (\S+)", cmd)
        if m:
            self.files[m.group(1)] = input or ""
            return Result(0, "", "")
        m = re.fullmatch(r"cp (\S+) (\S+)", cmd)
        if m and m.group(1) in self.files:
            self.files[m.group(2)] = self.files[m.group(1)]
            return Result(0, "", "")
        argv = shlex.split(cmd)
        if argv[:2] == ["sed", "-i"] and argv[-1] in self.files:  # the real sed, on the file's text
            import subprocess
            r = subprocess.run(["sed", *argv[2:-1]], input=self.files[argv[-1]], capture_output=True, text=True)
            if r.returncode == 0:
                self.files[argv[-1]] = r.stdout
            return Result(r.returncode, "", r.stderr)
        if argv[:1] == ["cat"] and len(argv) == 2:
            return Result(0, self.files[argv[1]], "") if argv[1] in self.files else Result(1, "", "No such file")
        if argv[:2] == ["test", "-e"]:
            return Result(0 if argv[2] in self.files else 1, "", "")
        if cmd.startswith("command -v "):
            return Result(0 if argv[-1] in self.programs else 1, "", "")
        for rx, ans in self.answers.items():
            if re.search(rx, cmd):
                ans = ans(cmd) if callable(ans) else ans
                return ans if isinstance(ans, Result) else Result(0, ans, "")
        return Result(127, "", f"{cmd}: not known to the test machine")

    def ran(self, rx: str) -> list[str]:
        return [c for c in self.log if re.search(rx, c)]
