"""The next stage's Jupyter kernel, started while this stage runs (issue 26): a kernel took
about 0.45 s to start and its notebook's first cell 0.25 s more to import the stage's modules,
before the stage's first step, once per stage.

While stage N runs, the runner starts the kernel for stage N+1 as papermill would (the same
kernel, arguments, folder and environment) and imports in it the ``helpers`` modules the
notebook imports, silently (no output, no history: the notebook's execution counts still begin
at 1). When stage N+1 begins, that kernel is handed to papermill (``km=``), which uses it instead
of starting one; nbclient does not shut down a kernel it was handed, so the runner does, after
the stage. A kernel that died, did not answer, was started for another notebook or with an
environment the runner no longer has, is shut down and not used: papermill starts one, as
without this. Its process carries the run's ``NESTED_NVME_OWNER`` like any stage kernel, so
Ctrl-C and a run taking over a killed one's lock stop it too (``helpers.runlock``)."""
from __future__ import annotations

import ast
import contextlib
import os
import time
from pathlib import Path

from .kernel import KERNEL_ARGUMENTS, KERNEL_NAME, kernel_manager_class

HISTORY_ARGUMENT = "--HistoryManager.hist_file=:memory:"  # what nbclient adds to an IPython kernel it starts
READY_TIMEOUT = 60  # seconds: papermill's own wait for a kernel it starts (start_timeout)
PRELOAD = """def _prewarm(names):
    import importlib
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # not a module, or it fails: the notebook's own import says so
            pass
_prewarm({names!r})
del _prewarm
"""


def notebook_imports(template: Path) -> list[str]:
    """The ``helpers`` modules the notebook's code cells import, in order: ``from helpers import
    nb`` gives helpers and helpers.nb, ``from helpers.stages import build_l1`` helpers.stages
    and helpers.stages.build_l1 (a name that is not a module fails quietly in the kernel)."""
    import nbformat
    try:
        cells = nbformat.read(template, as_version=4).cells
    except (OSError, ValueError):
        return []
    names: list[str] = []
    for cell in cells:
        try:
            tree = ast.parse(cell.source) if cell.cell_type == "code" else None
        except SyntaxError:  # IPython syntax (magics): not ours to read
            continue
        for node in ast.walk(tree) if tree else []:
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
            else:
                continue
            names += [n for n in found if n.split(".")[0] == "helpers" and n not in names]
    return names


def prewarmed_manager_class():
    """The runner's kernel manager (``kernel_manager_class``: no interrupt on the way to a shutdown),
    remembering the clients it makes: nbclient leaves a handed kernel's client connected."""
    base = kernel_manager_class()

    class PrewarmedKernelManager(base):
        def client(self, **kwargs):
            kc = super().client(**kwargs)
            self.__dict__.setdefault("handed_clients", []).append(kc)
            return kc

    return PrewarmedKernelManager


async def _ask_to_stop(km, now: bool) -> None:
    """A shutdown request, as nbclient's shutdown sends one to the kernel of a notebook that
    ended, without its interrupt first (see ``kernel_manager_class``); ``now``: killed."""
    try:
        if await km.is_alive():
            await (km.shutdown_kernel(now=True) if now else km.request_shutdown())
    except RuntimeError as e:  # nbclient's own test: a kernel already gone
        if "No kernel is running!" not in str(e):
            raise


async def _collect(km) -> None:
    """A kernel asked to stop waited for (jupyter_client terminates, then kills one that does
    not exit), its connection file removed and every client's channels closed."""
    try:
        if km.has_kernel:
            await km.finish_shutdown()
    finally:
        await km.cleanup_resources()
        for kc in km.__dict__.pop("handed_clients", []):
            stop_client(kc)


def stop_client(kc) -> None:
    """A client of a kernel that has exited: its channels stopped and its own zmq context
    destroyed at once. jupyter_client's ``stop_channels`` destroys it lingering 100 ms for each
    socket with a message still queued for the kernel, 0.2-0.9 s per stage here, for messages
    nobody will receive."""
    created = getattr(kc, "_created_context", False)
    kc._created_context = False  # so that stop_channels leaves the context to this function
    kc.stop_channels()
    if created and not kc.context.closed:
        kc.context.destroy(linger=0)


def ask_to_stop(km, now: bool = False) -> None:
    from jupyter_core.utils import run_sync
    run_sync(_ask_to_stop)(km, now)


def collect(km) -> None:
    from jupyter_core.utils import run_sync
    run_sync(_collect)(km)


class WarmKernel:
    """One kernel started ahead for a stage's notebook, the notebook's modules importing in it."""

    def __init__(self, template: Path):
        self.template = template
        self.environment = dict(os.environ)  # what the kernel inherits: compared at hand-over
        self.km = None
        self._preload = None  # the client that sent the imports, and their request
        self._request = None

    def start(self) -> WarmKernel | None:
        """The kernel started and the imports sent (not waited for); None if it cannot start."""
        from jupyter_core.utils import run_sync
        try:
            self.km = prewarmed_manager_class()(kernel_name=KERNEL_NAME)
            run_sync(self.km.start_kernel)(extra_arguments=[*KERNEL_ARGUMENTS, HISTORY_ARGUMENT],
                                           cwd=str(self.template.parent))
            self._preload = self.km.blocking_client()
            self._preload.start_channels(iopub=False, stdin=False, hb=False, control=False)
            self._request = self._preload.execute(PRELOAD.format(names=notebook_imports(self.template)),
                                                  silent=True, store_history=False)
        except Exception:  # noqa: BLE001 - any failure: papermill starts the kernel, as without this
            self.shutdown()
            return None
        return self

    def take(self, template: Path, timeout: float = READY_TIMEOUT):
        """The kernel manager to hand to papermill for ``template``, its imports done; None (and
        this kernel shut down) when it is another notebook's, the runner's environment changed
        since it started, or it died or did not answer within ``timeout`` seconds."""
        usable = template == self.template and dict(os.environ) == self.environment and self._ready(timeout)
        self._close_preload()
        if not usable:
            self.shutdown()
            return None
        km, self.km = self.km, None
        return km

    def _ready(self, timeout: float) -> bool:
        """The imports answered, the kernel alive."""
        from queue import Empty

        from jupyter_core.utils import run_sync
        deadline = time.monotonic() + timeout
        while self.km is not None and self._preload is not None and time.monotonic() < deadline:
            try:
                reply = self._preload.get_shell_msg(timeout=0.2)
            except Empty:
                if not run_sync(self.km.is_alive)():
                    return False
                continue
            if reply.get("parent_header", {}).get("msg_id") == self._request:
                return run_sync(self.km.is_alive)()
        return False

    def _close_preload(self) -> None:
        if self._preload is not None:
            self._preload.stop_channels()
            self._preload = None

    def shutdown(self) -> None:
        """The kernel stopped and its files removed, if it is still this object's."""
        self._close_preload()
        if self.km is not None:
            km, self.km = self.km, None
            ask_to_stop(km, now=True)  # it ran nothing of a stage
            collect(km)


class Kernels:
    """The runner's stage kernels: at most one started ahead, for the stage that comes next, and
    those of stages that ended, asked to shut down and collected one stage later (a kernel takes
    0.2-0.3 s to exit, which the next stage need not wait for)."""

    def __init__(self):
        self.ahead: WarmKernel | None = None
        self.stopping: list = []

    @contextlib.contextmanager
    def for_stage(self, template: Path, following: Path | None):
        """The kernel manager for ``template``'s stage, ready (None: papermill starts a kernel);
        then ``following``'s kernel started; the stage's kernel asked to stop after it. The first
        stage's kernel is started here too, so that the next one does not start beside it."""
        km = None
        try:
            if self.ahead is None:
                self.ahead = WarmKernel(template).start()
            km = self.ahead.take(template) if self.ahead else None
            self.ahead = WarmKernel(following).start() if following else None
            yield km
        finally:
            self._collect()
            if km is not None:
                self.stopping.append(km)
                ask_to_stop(km)

    def _collect(self) -> None:
        while self.stopping:
            collect(self.stopping.pop())

    def close(self) -> None:
        """No kernel left: the one started ahead (the run stopped before its stage) and those asked to stop."""
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            ahead.shutdown()
        self._collect()
