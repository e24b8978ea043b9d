"""The train stage's kernel started early: while the stage before it runs, a kernel is started and does the train
notebook's imports (Unsloth alone takes 35-40 s on the H200 hosts measured), and the train stage then runs in it.

The runner side (WarmKernel) never imports the training stack itself; the kernel side (preload) runs inside the
kernel. Whatever goes wrong with a warm kernel (it dies, an import fails), the stage runs in a fresh kernel of its
own as before, and the failure is said in run.log: a warm start can only save time, never change a result."""
from __future__ import annotations

import json
import sys
import time

# The modules each stage's notebook imports first; only the train stage is warmed (see WARMED_WHILE).
PRELOAD = {"train": ["medqlora.training.train", "medqlora.training.memory_plan", "medqlora.training.history",
                     "trl", "datasets", "peft"]}
# The stages a train kernel may be started during (it then waits until train), earliest first.
WARMED_WHILE = {"setup": "train", "preprocess": "train"}
STATE: dict = {}  # in the kernel: what preload did, read by notebook.start


def may_start_during_setup(gguf_file: str | None) -> bool:
    """Whether the setup stage leaves the packages the kernel imports as they are: on Colab it pip-installs what
    is missing (Unsloth on a fresh runtime), and a GGUF base is dequantized there (its memory is left to it)."""
    import importlib.util

    from medqlora.core.system import REQUIRED, in_colab

    if gguf_file:
        return False
    return not in_colab() or all(importlib.util.find_spec(n) for n in [*REQUIRED, "unsloth"])


def preload(stage: str, during: str) -> None:
    """In the kernel: import what `stage`'s notebook will (Unsloth first, where it is used: it patches the rest)."""
    import importlib

    t0 = time.time()
    if stage == "train":
        from medqlora.training.model import preload_unsloth

        preload_unsloth()
    for name in PRELOAD[stage]:
        importlib.import_module(name)
    STATE.update(stage=stage, during=during, seconds=round(time.time() - t0, 1))


def preloaded_line(stage: str) -> str | None:
    """What notebook.start prints when this kernel did its stage's imports ahead (None in a fresh kernel)."""
    if STATE.get("stage") != stage:
        return None
    return (f"kernel started ahead: its imports ({STATE['seconds']} s) were done while the {STATE['during']} "
            "stage ran")


class WarmKernel:
    """A kernel started now for a later stage, its imports sent to it at once; take() hands it to papermill."""

    def __init__(self, stage: str, during: str, kernel_name: str, cwd: str, log):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.stage, self.log, self.stopped = stage, log, False
        self.km = AsyncKernelManager(kernel_name=kernel_name)
        run_sync(self.km.start_kernel)(cwd=cwd)
        self.kc = self.km.client()
        self.kc.start_channels()
        code = f"import medqlora.run.warm as _w\n_w.preload({json.dumps(stage)}, {json.dumps(during)})\ndel _w"
        self.msg_id = self.kc.execute(code, store_history=False)

    def take(self, timeout: float = 900.0):
        """The kernel manager, once its imports are done (the time waited counts in the stage's seconds); None,
        with the reason in run.log, if they failed or the kernel died: the stage then starts its own kernel."""
        from jupyter_core.utils import run_sync

        try:
            reply = run_sync(self._reply)(timeout)
        except Exception as e:  # noqa: BLE001 (timeout, dead kernel: a fresh kernel does the stage)
            reply = {"status": "error", "ename": type(e).__name__, "evalue": str(e)}
        self.kc.stop_channels()
        if reply.get("status") == "ok":
            return self.km
        self.log(f"warm kernel for {self.stage} not used ({reply.get('ename')}: {reply.get('evalue')}); "
                 "the stage starts a kernel of its own")
        self.shutdown()
        return None

    async def _reply(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            if not await self.km.is_alive():
                raise RuntimeError("the kernel died while importing")
            try:
                msg = await self.kc.get_shell_msg(timeout=min(5.0, max(deadline - time.time(), 0.1)))
            except Exception:  # queue.Empty: not done yet
                if time.time() > deadline:
                    raise TimeoutError(f"imports not done after {timeout:.0f} s") from None
                continue
            if msg["parent_header"].get("msg_id") == self.msg_id:
                return msg["content"]

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        if self.stopped:
            return
        self.stopped = True
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception as e:  # noqa: BLE001
            print(f"note: could not stop the warm {self.stage} kernel: {e}", file=sys.stderr)
