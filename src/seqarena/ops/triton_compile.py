"""mamba_ssm's Triton kernels compiled ahead of their first launch, on every core.

Triton compiles a kernel at its first launch, and its autotuner compiles every config it times, one
after another, in the launching thread. mamba_ssm's SSD and Mamba-3 kernels are hundreds of
compiles per shape and dtype (the self-check alone 480 for sm_90), which made the compiler, on one
core, most of a GPU's first minutes (benchmarks/triton_compile_cpu.py measures it).
``compile_ahead(workload)`` runs the workload once with each launch only compiling its kernel, and
each autotuned launch every config its autotuner would time (or, where it has chosen one for these
arguments' key, at another length, that one: a new length may need new kernels, but only of the
configs that run), the compiles spread over threads
(Triton's own ``AsyncCompileMode``; its compiler releases the GIL). The workload's real run after it
finds every kernel compiled, times the configs and launches as before. The first run's values are
never computed: kernels do not run in it, so its outputs are whatever memory held.

A check of values (the env stage's self-check, `make gpu-check`'s family rows) runs each autotuned
kernel in its first config, untimed (``untuned``): every config computes the same function, and the
autotuner's timing costs a GPU at least 125 ms a config (``triton.testing.do_bench``'s warm-up and
repeats), a compile each too, for a choice that only a measurement needs. Where that first config
needs more shared memory than the GPU has (the first configs of several of the SSD's float32
kernels, on an H100), the check runs the next: compile_ahead, entered inside ``untuned``, compiles
the first configs, then, if one built is too big, runs the workload again to compile the next.
"""

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from contextvars import ContextVar
from unittest import mock

import torch


def compile_ahead(workload: Callable[[], object], workers: int | None = None) -> None:
    """Compile every Triton kernel that ``workload()`` launches (each config an autotuner would run;
    within ``untuned``, the one that runs), on ``workers`` threads (all cores by default), without
    running one; return when all are built."""
    import triton
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.errors import OutOfResources
    from triton.runtime.jit import JITCallable, JITFunction

    launch, parse, parsing = JITFunction.run, JITCallable.parse, threading.Lock()

    def parse_alone(self):
        """A kernel's source parsed, one at a time: CPython before 3.11.8 (the GPU env pins 3.11.7)
        and 3.12.2 corrupts an ast.parse that runs beside another (python/cpython#106905), and the
        compile fails ("SystemError: AST constructor recursion depth mismatch")."""
        with parsing:
            return parse(self)

    def compile_only(self, *args, grid, warmup, **kwargs):
        """The launch's compile, and its check of a kernel already built against the GPU's shared
        memory (a kernel still compiling passes), without the launch."""
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        if (refused := refusal(kernel)) is not None:
            raise refused
        return kernel

    def compile_each_config(self, *args, **kwargs):
        """The configs Autotuner.run would compile, compiled: the one it chose earlier for these
        arguments' key (at another length, which may specialize anew), else every one it would
        time (one refused, as its timing skips it); none chosen for later, since none is timed."""
        self.nargs = dict(zip(self.arg_names, args, strict=False))  # as Autotuner.run
        configs = configs_to_run(self, kwargs, self.prune_configs)
        for config in configs:
            with suppress(OutOfResources):
                self.fn.run(*args, **kwargs, **config.all_kwargs())
        self.nargs = None
        self.best_config = configs[0]  # what a launch leaves; mamba_ssm sizes buffers by it after one

    # A compile that fails (a config past the GPU's registers) is left for the real run, which
    # meets the failure as it would have without this. The patches hold process-wide while the
    # workload runs (seqarena launches kernels from one thread). Within untuned, its own run
    # compiles the config that runs (and runs its pre-hook, which zeroes a buffer): the first, or,
    # once that is built and found past the GPU's shared memory, the next, in another pass.
    one_config = _untuned.get()
    with ExitStack() as patches:
        pool = patches.enter_context(ThreadPoolExecutor(workers or os.cpu_count()))
        patches.enter_context(mock.patch.object(JITFunction, "run", compile_only))
        patches.enter_context(mock.patch.object(JITCallable, "parse", parse_alone))
        if not one_config:
            patches.enter_context(mock.patch.object(Autotuner, "run", compile_each_config))
        while True:
            with triton.AsyncCompileMode(pool, ignore_errors=True) as compiling:  # leaving waits for all
                workload()
            built = [future.kernel for future in compiling.future_kernels.values()]
            if not (one_config and any(refusal(kernel) for kernel in built)):
                return


def refusal(kernel):
    """The error that Triton's launch of ``kernel``, a compiled kernel, raises where it needs more
    shared memory than this GPU has (OutOfResources, before it loads); else (or for a kernel not
    built: still compiling, or failed) None."""
    from triton.compiler.compiler import CompiledKernel, max_shared_mem
    from triton.runtime.driver import driver
    from triton.runtime.errors import OutOfResources

    if not isinstance(kernel, CompiledKernel):
        return None
    most = max_shared_mem(driver.active.get_current_device())
    if kernel.metadata.shared <= most:
        return None
    return OutOfResources(kernel.metadata.shared, most, "shared memory")


def configs_to_run(autotuner, kwargs: dict, prune: Callable[[dict], list]) -> list:
    """The configs a Triton autotuner's run would compile for the arguments in ``autotuner.nargs``
    and ``kwargs``: the one it chose earlier for their key (the values of its ``key`` arguments,
    then every tensor argument's dtype), else those ``prune`` keeps for it to time."""
    if len(autotuner.configs) == 1:
        return autotuner.configs
    given = {k: v for k, v in {**autotuner.nargs, **kwargs}.items() if k in autotuner.arg_names}
    key = [given[name] for name in autotuner.keys if name in given]
    key += [str(v.dtype) for v in given.values() if hasattr(v, "dtype")]
    chosen = autotuner.cache.get(tuple(key))
    return [chosen] if chosen is not None else prune(kwargs)


_untuned: ContextVar[bool] = ContextVar("untuned", default=False)  # set while untuned holds


@contextmanager
def untuned() -> Iterator[None]:
    """While it holds, each autotuned Triton kernel runs the first config its autotuner keeps after
    pruning that this GPU can run (a config past its registers or shared memory fails, as it fails
    the autotuner's timing, and the next is tried), with that config's pre-hook (which may zero a
    buffer the kernel adds into), untimed; where a tuned run chose a config for these arguments'
    key, that one. The autotuner remembers no choice from it: a run outside still times every
    config. compile_ahead, entered inside, compiles the config that runs only."""
    from triton.compiler.errors import CompileTimeAssertionFailure
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.errors import OutOfResources, PTXASError

    def run_first_config(self, *args, **kwargs):
        """Autotuner.run as it runs a choice already made, the choice the first config that runs."""
        self.nargs = dict(zip(self.arg_names, args, strict=False))  # what pruning reads
        try:
            configs = configs_to_run(self, kwargs, self.prune_configs)
            for config in configs:
                self.best_config = config
                if config.pre_hook is not None:
                    config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
                try:
                    return self.fn.run(*args, **kwargs, **config.all_kwargs())
                except (OutOfResources, CompileTimeAssertionFailure, PTXASError):
                    if config is configs[-1]:
                        raise
        finally:
            self.nargs = None

    token = _untuned.set(True)
    try:
        with mock.patch.object(Autotuner, "run", run_first_config):
            yield
    finally:
        _untuned.reset(token)


def as_check(workload: Callable[[], object], device: torch.device):
    """``workload()``, a check of values on the cuda backend: mamba_ssm's Triton kernels untuned,
    and on a GPU compiled ahead on every core."""
    with untuned():
        if device.type == "cuda":
            compile_ahead(workload)
        return workload()
