"""compile_ahead on mamba_ssm's own Triton kernels, compiled for an H100 (sm_90) on this CPU by
Triton's compiler and ptxas (cuda_emulation.py, "compiled for sm_90"): every config that the
autotuner would time is built, on worker threads, and nothing runs; the real launch after it then
finds its kernel compiled. And untuned, as checks run: the first config that compiles, untimed."""

import threading
import time

import pytest
import torch

from conftest import REPO, load_benchmark, load_module
from cuda_emulation import Compiles, cuda_backend_on_cpu, launches_doing_nothing, patched, tuned_without_a_gpu
from seqarena.ops.triton_compile import compile_ahead, untuned


@pytest.fixture
def compiled_for_sm90(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # no kernel found built by an earlier run
    with cuda_backend_on_cpu("compiled for sm_90"):
        yield


def test_compile_ahead_builds_every_config_on_threads_and_the_real_launch_finds_them(compiled_for_sm90):
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd, _chunk_cumsum_fwd_kernel

    dt, A = torch.rand(2, 100, 8), -torch.rand(8)
    state, x = torch.zeros(2, 8, 16, 4), torch.randn(2, 8, 16)
    B, C = torch.randn(2, 1, 4), torch.randn(2, 1, 4)

    def workload():
        _chunk_cumsum_fwd(dt, A, chunk_size=32)  # autotuned: 7 configs
        # heuristics, no autotuner; its dt_bias is not optional (a mamba_ssm bug)
        step = dict(D=torch.randn(8, 16), dt_bias=torch.randn(8, 16))
        selective_state_update(state, x, torch.rand(2, 8, 16), -torch.rand(8, 16, 4), B, C, **step)

    configs = len(_chunk_cumsum_fwd_kernel.configs)
    with Compiles() as compiles:
        compile_ahead(workload, workers=2)
    built = ["_chunk_cumsum_fwd_kernel"] * configs + ["_selective_scan_update_kernel"]
    assert sorted(compiles.kernels) == sorted(built)
    assert threading.get_ident() not in compiles.threads and len(compiles.threads) <= 2
    assert _chunk_cumsum_fwd_kernel.cache == {}  # no config chosen: none was timed
    assert state.abs().sum() == 0  # nothing ran

    with Compiles() as compiles, pytest.raises(RuntimeError, match="was launched"):
        workload()  # the real run: its autotuner's first config is found built, then launched
    assert compiles.missed == []
    with Compiles() as compiles:
        compile_ahead(workload, workers=2)
    assert compiles.missed == []  # every config built, the heuristic kernel too


def test_compile_ahead_parses_one_kernel_at_a_time(compiled_for_sm90):
    """CPython 3.11.7 (this machine's, and the GPU env's pin) corrupts an ast.parse that overlaps
    another (python/cpython#106905): before compile_ahead parsed one kernel at a time, a compile on
    one worker failed now and then beside another's parse ("SystemError: AST constructor recursion
    depth mismatch"), and the real run compiled that kernel itself; where the main thread's parse
    were the one hit, the workload would fail."""
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd, _chunk_cumsum_fwd_kernel
    from triton.runtime.jit import JITCallable

    parse, parsing, overlapping = JITCallable.parse, [], []

    def slow_parse(self):
        parsing.append(self)
        overlapping.append(len(parsing))
        time.sleep(0.05)  # wide enough for the other worker's parse to begin, were it let
        try:
            return parse(self)
        finally:
            parsing.remove(self)

    dt, A = torch.rand(2, 100, 8), -torch.rand(8)
    with patched(JITCallable, "parse", slow_parse), Compiles() as compiles:
        compile_ahead(lambda: _chunk_cumsum_fwd(dt, A, chunk_size=32), workers=2)
    assert len(compiles.kernels) == len(_chunk_cumsum_fwd_kernel.configs) > 1
    assert max(overlapping) == 1, overlapping


def test_where_the_autotuner_has_chosen_compile_ahead_builds_the_choice_only(compiled_for_sm90):
    """The kernel rows' lengths after the first: each autotuner has chosen a config for its key (the
    chunk size and heads, never the length), and a length that Triton specializes anew (128,
    divisible by 16, after 100) needs that config compiled again, not every one; a check there
    runs the choice too."""
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd, _chunk_cumsum_fwd_kernel

    configs, A = _chunk_cumsum_fwd_kernel.configs, -torch.rand(8)
    with tuned_without_a_gpu():
        _chunk_cumsum_fwd(torch.rand(2, 100, 8), A, chunk_size=32)
    assert list(_chunk_cumsum_fwd_kernel.cache.values()) == [configs[-1]]

    dt = torch.rand(2, 128, 8)
    with Compiles() as compiles:
        compile_ahead(lambda: _chunk_cumsum_fwd(dt, A, chunk_size=32), workers=2)
    assert compiles.kernels == ["_chunk_cumsum_fwd_kernel"]
    with Compiles() as compiles, pytest.raises(RuntimeError, match="was launched"):
        _chunk_cumsum_fwd(dt, A, chunk_size=32)  # tuned: the choice, found built, launched
    assert compiles.missed == []
    _chunk_cumsum_fwd_kernel.best_config = None
    with untuned(), pytest.raises(RuntimeError, match="was launched"):
        _chunk_cumsum_fwd(dt, A, chunk_size=32)
    assert _chunk_cumsum_fwd_kernel.best_config is configs[-1]


def test_a_config_that_fails_to_compile_is_left_to_the_real_run(compiled_for_sm90):
    """A config that fails to compile fails in its worker; the others are built, and compile_ahead
    returns: the real run meets the failure, as it would without compile_ahead (Triton's autotuner
    skips a config that ptxas or the GPU's resources refuse)."""
    import triton
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd, _chunk_cumsum_fwd_kernel

    not_a_power_of_two = triton.Config({"BLOCK_SIZE_H": 3})  # tl.arange refuses it
    configs = [*_chunk_cumsum_fwd_kernel.configs, not_a_power_of_two]
    dt, A = torch.rand(2, 100, 8), -torch.rand(8)
    with patched(_chunk_cumsum_fwd_kernel, "configs", configs):
        with Compiles() as compiles:
            compile_ahead(lambda: _chunk_cumsum_fwd(dt, A, chunk_size=32), workers=2)
        with Compiles() as again:
            compile_ahead(lambda: _chunk_cumsum_fwd(dt, A, chunk_size=32), workers=2)
    assert len(compiles.missed) == len(configs) and len(compiles.kernels) == len(configs) - 1
    assert again.missed == ["_chunk_cumsum_fwd_kernel"] and again.kernels == []  # the failed one, tried again


def test_each_gpu_rows_workload_compiles_ahead_whole_then_runs_within_an_h100s_resources(compiled_for_sm90):
    """The backend record in both dtypes, every family row's comparison on the cuda backend, then
    the kernel rows' SSD and Mamba-3 at the Fig. 8 shapes (bfloat16, mamba_ssm's chunks; the
    shortest length), each once through compile_ahead, all their kernels built for sm_90, then run,
    each launch doing nothing once Triton has checked it against an H100's resources. The run finds
    every kernel built, the next config too where the first needs more shared memory than an H100
    has (the first config of several of the SSD's float32 kernels), which Triton refuses at its
    launch and untuned passes over: compile_ahead built the first, found it too big, and built the
    next in a second pass; a compile that failed ahead would be missed. The kernel rows run untuned
    too, as the checks do, so that CI compiles tens of kernels, not the hundreds that
    benchmarks/triton_compile_cpu.py compiles and times."""
    work = load_benchmark("triton_compile_cpu").workloads()
    shortest = min((name for name in work if name.startswith("kernels L ")), key=lambda n: int(n.split()[-1]))
    work = {name: w for name, w in work.items() if not name.startswith("kernels L ") or name == shortest}
    passed_over = {}
    with untuned(), launches_doing_nothing():
        for name, workload in work.items():
            with Compiles() as ahead:
                compile_ahead(workload, workers=2)
            with Compiles() as run:
                workload()
            assert run.missed == [], name
            assert ahead.kernels or name in ("family hybrid-tiny", "family mamba_lti-tiny"), name
            passed_over[name] = len(ahead.past_h100)
    assert passed_over["self-check float32"] and passed_over["family mamba2-tiny"], passed_over
    assert not passed_over["self-check bfloat16"] and not passed_over[shortest], passed_over


def test_untuned_runs_the_first_config_built_ahead_and_times_none(compiled_for_sm90):
    """A check's run: compile_ahead builds the first of an autotuner's configs only, and the run
    launches it, found built, without the benchmarker that times configs; the autotuner keeps its
    configs and no choice, so that a run outside times them."""
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd, _chunk_cumsum_fwd_kernel
    from triton.runtime.driver import driver

    dt, A = torch.rand(2, 100, 8), -torch.rand(8)
    configs, timed = list(_chunk_cumsum_fwd_kernel.configs), []
    benchmarker = driver.active.get_benchmarker
    with patched(driver.active, "get_benchmarker", lambda: timed.append(True) or benchmarker()):
        with untuned():
            with Compiles() as compiles:
                compile_ahead(lambda: _chunk_cumsum_fwd(dt, A, chunk_size=32), workers=2)
            assert compiles.kernels == ["_chunk_cumsum_fwd_kernel"]
            with Compiles() as compiles, pytest.raises(RuntimeError, match="was launched"):
                _chunk_cumsum_fwd(dt, A, chunk_size=32)
            assert compiles.missed == [] and timed == []
            assert _chunk_cumsum_fwd_kernel.best_config is configs[0]
        assert _chunk_cumsum_fwd_kernel.configs == configs and _chunk_cumsum_fwd_kernel.cache == {}
        with pytest.raises(RuntimeError, match="was launched"):
            _chunk_cumsum_fwd(dt, A, chunk_size=32)  # tuned: the first config timed is launched
        assert timed == [True]


def test_untuned_passes_over_a_config_that_cannot_compile_and_runs_the_next_ones_pre_hook(compiled_for_sm90):
    """As the autotuner skips a config that the compiler or the GPU's resources refuse."""
    kernels = load_module(REPO / "tests/fixtures/triton_first_config.py")
    out = torch.full((10,), float("nan"))
    with untuned(), pytest.raises(RuntimeError, match="was launched"):
        kernels.add_one[(2,)](out, 10)
    assert kernels.HOOKS == [4, 8] and kernels.add_one.best_config.kwargs == {"BLOCK": 8}
    assert out.eq(0).all()  # the second config's pre-hook, before its launch


def test_untuned_passes_over_a_config_past_the_gpus_shared_memory(compiled_for_sm90):
    """A config that compiles but needs more shared memory than the GPU has: Triton refuses it at
    its launch (OutOfResources), and untuned runs the next, as the autotuner's timing skips it."""
    kernels = load_module(REPO / "tests/fixtures/triton_first_config.py")
    x = torch.randn(256, 256)
    out = torch.full_like(x, float("nan"))
    with untuned(), pytest.raises(RuntimeError, match="was launched"):
        kernels.matmul[lambda meta: (256 // meta["BLOCK"],) * 2](x, x, out, 256)
    assert kernels.HOOKS == [128, 16] and kernels.matmul.best_config.kwargs == {"BLOCK": 16}


def test_compile_ahead_within_untuned_builds_the_config_that_runs_past_one_too_big(compiled_for_sm90):
    """A check on a GPU (as_check): compile_ahead builds the first config, finds it past the GPU's
    shared memory, and builds the next, which untuned then runs, found built; nothing launches."""
    kernels = load_module(REPO / "tests/fixtures/triton_first_config.py")
    x = torch.randn(256, 256)
    out = torch.full_like(x, float("nan"))

    def workload():
        kernels.matmul[lambda meta: (256 // meta["BLOCK"],) * 2](x, x, out, 256)

    with untuned():
        with Compiles() as ahead:
            compile_ahead(workload, workers=2)
        assert ahead.kernels == ["matmul", "matmul"] and ahead.past_h100 == ["matmul"]
        assert kernels.matmul.best_config.kwargs == {"BLOCK": 16}
        kernels.HOOKS.clear()
        with Compiles() as run, launches_doing_nothing():
            workload()
    assert run.missed == [] and kernels.HOOKS == [128, 16]  # the first refused at its launch
