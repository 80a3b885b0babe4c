"""Each stage's steps (``helpers.steps.Step``), listed in order in the module's ``STEPS``:
a notebook calls ``ctx.step(module.SomeStep())`` once per cell, in that order.

Rule: a step's ``plan`` reads only and says exactly what ``apply`` will do; nothing in a stage
changes a machine outside a step's ``apply``.

Facts, checks, operations and libvirt XML do the work; a step records what later stages need
in the run state and returns what the notebook shows."""
