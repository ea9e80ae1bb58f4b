"""Triton's compiles for an H100 (sm_90) in `make gpu-check`'s GPU rows, on one core and on all.

    python benchmarks/triton_compile_cpu.py          (after `make oracle`; about 20 minutes on 2 cores)

No GPU is needed: mamba_ssm's kernels compile here for sm_90 with Triton's own compiler and the
ptxas it ships, and none runs (tests/cuda_emulation.py, "compiled for sm_90"). Each workload is what
a GPU row runs on the cuda backend, in the order the rows run them, so that a kernel already built
for an earlier one is not counted again: the env stage's backend record (its self-check) in float32
and bfloat16 (the backend rows, and the pipeline's kernels job); each family row's comparison of
the tiny model on cuda and torch (forward, backward and decoding); these checks run each kernel in
its first config, untimed (``seqarena.ops.triton_compile.untuned``), or where an H100 refuses that
one, the next, compiled ahead in a second pass, as on the GPU. Then the kernel rows' Triton
ops, one length after another (the SSD and Mamba-3 SISO at the Fig. 8 shapes, forward and
forward+backward as bench_kernels runs them on a GPU, every config their autotuners time, or at a
length after the first the config they chose at the one before (a GPU's timed run chooses one
between lengths: here a run that chooses and runs nothing, tests/cuda_emulation.py); their
seconds include making the inputs on this CPU, which a GPU makes on the device).

Per workload: how many kernels compile (one per config and specialization), the seconds on one
thread (as Triton compiles at the first launch, one config after another) and on every core
(``seqarena.ops.triton_compile.compile_ahead``), each from an empty Triton cache; one mode, then the
other, in one run on the same machine; and in each mode the launches that a second pass found
without their kernel (a compile that failed: 0 expected).
"""

import argparse
import inspect
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

from gpu_check import FAMILY_TOLERANCES, SHAPES, cuda_versus_torch  # noqa: E402

from cuda_emulation import Compiles, cuda_backend_on_cpu, tuned_without_a_gpu  # noqa: E402
from seqarena.bench import ON_GPU, KernelGrid, _mamba3_timings, _ssd_timings, bench_kernels  # noqa: E402
from seqarena.env import backend_record  # noqa: E402
from seqarena.ops.triton_compile import compile_ahead, untuned  # noqa: E402

CPU = torch.device("cpu")


def workloads() -> dict:
    """Name: a function of no arguments, in the order the GPU rows run them: the checks (they run
    mamba_ssm's Triton kernels untuned), then the kernel rows' measurements."""
    work = {
        f"self-check {dtype}": lambda dtype=dtype: backend_record("cuda", getattr(torch, dtype))
        for dtype in ("float32", "bfloat16")
    }
    for family in FAMILY_TOLERANCES:
        if family != "mamba3_mimo":  # TileLang, not Triton: no kernel of it compiles here
            model = f"{family}-tiny"
            work[f"family {model}"] = lambda model=model: cuda_versus_torch(model, CPU)
    fig8, grid = SHAPES["kernels"][0], gpu_kernel_grid()
    for length in fig8["lengths"]:

        def triton_ops(length=length):
            gen = torch.Generator().manual_seed(length)
            for timings in (_ssd_timings, _mamba3_timings):
                list(timings(grid, length, ["cuda"], gen))

        work[f"kernels L {length}"] = triton_ops
    return work


def as_on_the_gpu(name: str):
    """Where workload ``name`` compiles ahead on a GPU: the checks within untuned (as_check), the
    kernel rows outside it."""
    return nullcontext() if name.startswith("kernels L ") else untuned()


def gpu_kernel_grid() -> KernelGrid:
    """The grid of `make gpu-check`'s kernel rows on a GPU (its shapes, bench_kernels' defaults for
    the rest, bfloat16, mamba_ssm's chunks), on this CPU, each pass run once after its warm-up."""
    fig8, defaults = SHAPES["kernels"][0], inspect.signature(bench_kernels).parameters
    batch, ssd_state, head_dim = (defaults[k].default for k in ("batch", "ssd_state", "head_dim"))
    return KernelGrid(batch, fig8["dim"], fig8["state"], ssd_state, head_dim, CPU, 1, *ON_GPU)


def compile_all(workers: int) -> dict[str, tuple[int, float, int]]:
    """(kernels compiled, seconds, launches that a second pass found without their kernel: a compile
    that failed) per workload, from an empty Triton cache, on ``workers`` threads."""
    said = {}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        with cuda_backend_on_cpu("compiled for sm_90"):
            for name, workload in workloads().items():
                start = time.perf_counter()
                with as_on_the_gpu(name), Compiles() as compiles:
                    compile_ahead(workload, workers=workers)
                seconds = time.perf_counter() - start
                with as_on_the_gpu(name), Compiles() as again:
                    compile_ahead(workload, workers=workers)
                said[name] = len(compiles.kernels), seconds, len(again.missed)
                if name.startswith("kernels L "):  # a GPU's timed run, which chooses each config
                    with tuned_without_a_gpu():
                        workload()
                print(f"  {workers} thread(s), {name}: {said[name]}", flush=True)
    return said


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads for the parallel mode")
    args = parser.parse_args()
    one, every = compile_all(1), compile_all(args.workers)
    print(f"\n| workload | kernels | 1 thread s | {args.workers} threads s | speed-up | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (kernels, serial, failed) in one.items():
        parallel, failed_parallel = every[name][1:]
        print(
            f"| {name} | {kernels} | {serial:.1f} | {parallel:.1f} | {serial / parallel:.2f}x "
            f"| {failed}, {failed_parallel} |"
        )
    total = [sum(seconds for _, seconds, _ in mode.values()) for mode in (one, every)]
    kernels = sum(kernels for kernels, _, _ in one.values())
    print(f"| all | {kernels} | {total[0]:.1f} | {total[1]:.1f} | {total[0] / total[1]:.2f}x | |")


if __name__ == "__main__":
    main()
