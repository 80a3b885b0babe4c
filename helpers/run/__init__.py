"""Running the stages: ``python -m helpers run|check-params|compare|fleet`` (``cli``).

- ``cli``: the command line, its refusals in one line, and ``run`` up to the L1 lock;
- ``choice``: the stage notebooks and which of them a run takes (``--stages``, ``--from``);
- ``folders``: run folders under ``--outputs``, ``latest``, ``summary.json``;
- ``execute_stages``: the chosen stages in order, each attempt recorded, the first failure explained;
- ``kernel``: one stage notebook through papermill in a Jupyter kernel;
- ``prewarm``: the next stage's kernel started, its modules imported, while a stage runs;
- ``ctrl_c``: Ctrl-C noted, the run's kernels stopped, the stage recorded interrupted (never raised mid-line);
- ``attempts``: a stage's attempts in the summary (begun, killed, its steps and times);
- ``diagnose``: what failed and what to do, and what happened to L1 when it was the cause.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
