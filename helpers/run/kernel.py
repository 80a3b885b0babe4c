"""One stage notebook executed by papermill in a Jupyter kernel, headless, into the run
folder; the kernel's transport warning and shutdown interrupt kept off the terminal
(Ctrl-C: ``ctrl_c``)."""
from __future__ import annotations

import time
from pathlib import Path

from .choice import notebook_parameters
from .diagnose import failure_summary

KERNEL_NAME = "python3"
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]  # no transport warning on the console


class _Quiet:
    """A stream that drops the kernel's transport warning, passing the rest on."""

    NOISE = ("Kernel is running over TCP without encryption",)

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if not any(n in text for n in self.NOISE):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def kernel_manager_class():
    """jupyter_client's kernel manager, except that it does not interrupt the kernel on its way
    to a shutdown. jupyter_client sends SIGINT before every shutdown_request; when it lands while
    ipykernel is still finishing the last cell's handler (the reply is sent, the handler not yet
    returned), the kernel logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." on the
    terminal of a stage that passed. The last cell has finished by then: nothing needs interrupting.
    A cell that runs past its timeout is still interrupted (nbclient calls interrupt_kernel outside
    a shutdown), and Ctrl-C kills the kernel (``_interruptible``)."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def run_stage(stage: str, template: Path, run_dir: Path, params_file: Path, state_file: Path,
              timeout: int, log, mode: str = "run", km=None) -> dict:
    """Execute one stage notebook with papermill; return its summary entry. ``km``: a kernel
    started for it ahead (``prewarm``), which papermill uses and leaves running; None: papermill
    starts one and shuts it down. A KeyboardInterrupt the kernel itself got propagates: the
    caller records where it stopped."""
    import papermill as pm

    out = run_dir / template.name
    t0 = time.monotonic()
    entry = {"stage": stage, "notebook": out.name}
    try:
        pm.execute_notebook(
            str(template), str(out),
            parameters={"params_file": str(params_file), "state_file": str(state_file), "interactive": False,
                        **({"mode": mode} if "mode" in notebook_parameters(template) else {})},
            cwd=str(template.parent), kernel_name=KERNEL_NAME, progress_bar=False,
            log_output=True, stdout_file=log, stderr_file=_Quiet(log), execution_timeout=timeout,
            extra_arguments=list(KERNEL_ARGUMENTS), kernel_manager_class=kernel_manager_class(),
            **({"km": km} if km is not None else {}),
        )
        entry["status"] = "passed"
    except Exception as e:  # papermill's errors and the kernel's
        entry.update(status="failed", **failure_summary(stage, out, e, state_file))
        if entry["error"].startswith("KeyboardInterrupt"):  # Ctrl-C reached the kernel too
            raise KeyboardInterrupt from e
    entry["seconds"] = round(time.monotonic() - t0, 1)
    return entry
