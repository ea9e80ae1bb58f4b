"""The cuda backend, run through mamba_ssm's and causal_conv1d's own code on a CPU (cuda_emulation.py),
against the torch backend: every family's forward, every gradient and cached decoding; Mamba-3's
Triton SISO kernels; the env
stage's self-check; a bf16-autocast training step; and the stand-ins' argument lists against the
pinned packages' C++ bindings."""

import ast
import functools
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import load_benchmark
from cuda_emulation import BINDINGS, TILELANG, TILELANG_KERNELS, BindingCheckFailed, cuda_backend_on_cpu
from mamba_ssm_reference import oracle_on_path
from seqarena.models import build_model
from seqarena.ops import backends, mamba3_chunk_scan, mamba3_state_update, ssd_state_update

VOCAB = 61
# The GPU env's source builds (envs/gpu.post-deploy.sh): the tarball and the file with the bindings.
PINNED_SOURCES = {
    "selective_scan_cuda": ("mamba-2.3.2.post1", "csrc/selective_scan/selective_scan.cpp"),
    "causal_conv1d_cuda": ("causal-conv1d-1.6.1.post4", "csrc/causal_conv1d.cpp"),
}


gpu_check = load_benchmark("gpu_check")  # its family rows run the comparison of the first test on a GPU
relative_error = gpu_check.relative_error


@pytest.fixture(scope="module")
def emulated_cuda():
    with cuda_backend_on_cpu():
        yield


def run_on(backend, monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV_VAR, backend)


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "hybrid", "mamba_lti", "mamba3", "mamba3_mimo"])
def test_every_family_on_cuda_matches_torch_forward_every_gradient_and_decoding(arch, emulated_cuda):
    """`make gpu-check`'s family comparison, here on CPU tensors in float32: logits, every
    parameter's gradient, and a prefill with a cache then steps. Mamba-3 SISO's decoding step
    computes its output as a bfloat16 dot, which the interpreter gets wrong (cuda_emulation.py):
    there only its states are held (test_mamba3_decoding_on_cuda_runs_mamba_ssms_step_kernel)."""
    errors = gpu_check.cuda_versus_torch(f"{arch}-tiny", torch.device("cpu"))
    grads = {name: error for name, error in errors.items() if name.startswith("grad ")}
    n_params = len(list(build_model(f"{arch}-tiny", vocab_size=gpu_check.FAMILY_VOCAB).parameters()))
    assert len(grads) == n_params
    assert errors["logits"] < 1e-5 and (arch == "mamba3" or errors["decoding"] < 1e-5), errors
    worst = max(grads, key=grads.get)
    assert grads[worst] < 1e-4, worst


def test_a_family_row_names_its_worst_error_against_its_tolerance_or_the_error_that_stopped_it():
    """One family's row of `make gpu-check`: passed or failed by its largest error, which it names;
    a family that raises (a CUDA graph that does not capture) fails its own row, not the section."""
    errors = {
        "logits": 2e-3,
        "decoding": 1e-3,
        "decoding as CUDA graphs": 3e-2,
        "grad a": 1e-4,
        "grad b": 0.0,
    }
    row = gpu_check.family_row("family x", 1e-2, lambda: errors)
    assert row.status == "failed" and row.result == (
        "largest relative error 3.0e-02 (decoding as CUDA graphs; tolerance 1e-02), logits, decoding, "
        "decoding as CUDA graphs, 2 gradients"
    )
    assert gpu_check.family_row("family x", 5e-2, lambda: errors).status == "passed"

    def capture_fails():
        raise RuntimeError("operation not permitted when stream is capturing")

    row = gpu_check.family_row("family y", 1e-2, capture_fails)
    assert (row.status, row.result) == (
        "failed",
        "RuntimeError: operation not permitted when stream is capturing",
    )


def count_calls(monkeypatch, **functions) -> dict[str, int]:
    """How often each autograd Function (by the name given) is applied from here on."""
    calls = dict.fromkeys(functions, 0)
    for name, function in functions.items():

        def counted(*args, name=name, apply=function.apply):
            calls[name] += 1
            return apply(*args)

        monkeypatch.setattr(function, "apply", counted)
    return calls


def test_mamba1_on_cuda_trains_through_mamba_ssms_fused_mamba_inner_fn(emulated_cuda, monkeypatch):
    """Without a cache, Mamba-1 takes mamba_ssm's fast path, as its own Mamba does: one call of
    mamba_inner_fn per layer, none of the composed scan."""
    from mamba_ssm.ops import selective_scan_interface as interface

    calls = count_calls(monkeypatch, inner=interface.MambaInnerFn, scan=interface.SelectiveScanFn)
    model = build_model("mamba-tiny", vocab_size=VOCAB)
    run_on("cuda", monkeypatch)
    model(torch.randint(0, VOCAB, (2, 16))).sum().backward()
    assert calls == {"inner": model.config.n_layer, "scan": 0}


def test_mamba2_on_cuda_trains_through_mamba_ssms_fused_mixer(emulated_cuda, monkeypatch):
    """Without a cache, Mamba-2 takes mamba_ssm's fast path, as its own Mamba2 does
    (use_mem_eff_path): one call of mamba_split_conv1d_scan_combined per layer, none of the
    composed SSD; with a cache (a prefill), the composed ops, as mamba_ssm's."""
    from mamba_ssm.ops.triton.ssd_combined import MambaChunkScanCombinedFn, MambaSplitConv1dScanCombinedFn

    calls = count_calls(monkeypatch, fused=MambaSplitConv1dScanCombinedFn, ssd=MambaChunkScanCombinedFn)
    model = build_model("mamba2-tiny", vocab_size=VOCAB)
    run_on("cuda", monkeypatch)
    ids = torch.randint(0, VOCAB, (2, 16))
    model(ids).sum().backward()
    assert calls == {"fused": model.config.n_layer, "ssd": 0}
    with torch.no_grad():
        model(ids, cache=model.allocate_cache(2, 16))
    assert calls == {"fused": model.config.n_layer, "ssd": model.config.n_layer}


@pytest.mark.parametrize(
    "ssm_cfg",
    [
        dict(rmsnorm=False, D_has_hdim=True, ngroups=2, dt_limit=(0.001, 0.1)),  # SiLU(z) in the SSD
        dict(d_ssm=64, headdim=16, norm_before_gate=True),  # MLP channels beside the SSM
    ],
    ids=["no-rmsnorm", "mlp-channels"],
)
def test_mamba2s_fused_mixer_matches_the_torch_backend_at_every_option(ssm_cfg, emulated_cuda, monkeypatch):
    """mamba_split_conv1d_scan_combined's other branches, which the tiny sizes do not take: the gate
    in the SSD without a gated norm, D per channel, two groups, dt's limits, MLP channels beside the
    SSM and the norm before the gate. Output and every gradient against the torch backend, float32."""
    from seqarena.models import Mamba, MambaConfig

    torch.manual_seed(3)
    cfg = dict(layer="Mamba2", d_state=16, headdim=32, chunk_size=16) | ssm_cfg
    model = Mamba(MambaConfig(d_model=64, n_layer=1, vocab_size=VOCAB, ssm_cfg=cfg))
    ids = torch.randint(0, VOCAB, (2, 45))
    said = {}
    for backend in ("torch", "cuda"):
        run_on(backend, monkeypatch)
        model.zero_grad()
        logits = model(ids)
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        said[backend] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (logits, grads), (want_logits, want_grads) = said["cuda"], said["torch"]
    assert relative_error(logits, want_logits) < 1e-5
    worst = max(want_grads, key=lambda n: relative_error(grads[n], want_grads[n]))
    assert relative_error(grads[worst], want_grads[worst]) < 1e-4, worst


def test_mamba2_decoding_with_a_dt_limit_runs_mamba_ssms_step_kernel(emulated_cuda):
    """mamba_ssm's selective_state_update reads dt_bias's strides when dt and A are tied over headdim:
    the dt_limit path must not hand it None."""
    torch.manual_seed(1)
    batch, nheads, headdim, d_state = 2, 4, 8, 16
    state = torch.randn(batch, nheads, headdim, d_state)
    inputs = dict(
        x=torch.randn(batch, nheads, headdim),
        dt=torch.randn(batch, nheads),
        A=-torch.rand(nheads) - 0.5,
        B=torch.randn(batch, 1, d_state),
        C=torch.randn(batch, 1, d_state),
        D=torch.randn(nheads),
        z=torch.randn(batch, nheads, headdim),
        dt_bias=torch.randn(nheads) * 0.1,
        dt_softplus=True,
        dt_limit=(0.05, 0.5),
    )
    want_state = state.clone()
    want = ssd_state_update(want_state, **inputs, backend="torch")
    got = ssd_state_update(state, **inputs, backend="cuda")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)


def mamba3_inputs(length, heads=4, d_state=32, headdim=32, angles=8, rank=1, seed=2):
    """Mamba-3's SSM inputs; rank > 1: MIMO's, with its projections and its rotary pairs."""
    torch.manual_seed(seed)
    dt = torch.nn.functional.softplus(torch.randn(2, heads, length) - 1)
    inputs = dict(
        q=torch.randn(2, length, rank, 1, d_state),
        k=torch.randn(2, length, rank, 1, d_state),
        x=torch.randn(2, length, heads, headdim),
        adt=-torch.rand(2, heads, length) * dt,
        dt=dt,
        trap=torch.randn(2, heads, length),
        q_bias=torch.randn(heads, rank, d_state),
        k_bias=torch.randn(heads, rank, d_state),
        angles=torch.randn(2, length, heads, angles),
        D=torch.randn(heads),
        z=torch.randn(2, length, heads, headdim),
    )
    if rank > 1:
        inputs |= dict(
            mimo_x=torch.randn(heads, rank, headdim),
            mimo_z=torch.randn(heads, rank, headdim),
            rotate_pairwise=False,
        )
    return inputs


def test_mamba3_siso_on_cuda_runs_mamba_ssms_triton_kernels_forward_and_backward(emulated_cuda):
    """mamba3_siso_combined from given states to its final ones, at a length past two chunks and no
    multiple of one: the output, the final states, and the gradient of every input and initial
    state through its Triton backward."""
    inputs = mamba3_inputs(45)
    initial = (
        torch.rand(2, 4, 8) * 6,
        torch.randn(2, 4, 32, 32),
        torch.randn(2, 1, 4, 32),
        torch.randn(2, 4, 32),
    )
    said = {}
    for backend in ("torch", "cuda"):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        states = [t.clone().requires_grad_() for t in initial]
        y, final = mamba3_chunk_scan(
            **leaves, chunk_size=16, initial_states=states, return_final_states=True, backend=backend
        )
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        grads = {k: v.grad for k, v in leaves.items()} | {
            f"initial {i}": t.grad for i, t in enumerate(states)
        }
        said[backend] = y.detach(), [t.detach() for t in final], grads
    (got, got_states, got_grads), (want, want_states, want_grads) = said["cuda"], said["torch"]
    assert relative_error(got, want) < 1e-4  # float32 sums in another order
    for ours, theirs in zip(got_states, want_states, strict=True):
        assert relative_error(ours, theirs) < 1e-4
    for name, want_grad in want_grads.items():
        assert got_grads[name] is not None and relative_error(got_grads[name], want_grad) < 1e-4, name


def test_mamba3_decoding_on_cuda_runs_mamba_ssms_step_kernel(emulated_cuda):
    """mamba3_siso_step advances the four states as ours does. Its output is a bfloat16 dot inside
    the kernel, which the interpreter computes wrongly (cuda_emulation.py): only the states are held."""
    inputs = mamba3_inputs(1)
    step = {
        key: value[:, 0] if key in ("q", "k", "x", "z", "angles") else value for key, value in inputs.items()
    }
    step |= {key: inputs[key][..., 0] for key in ("adt", "dt", "trap")}
    held = [
        torch.rand(2, 4, 8) * 6,
        torch.randn(2, 4, 32, 32),
        torch.randn(2, 1, 4, 32),
        torch.randn(2, 4, 32),
    ]
    want = [t.clone() for t in held]
    mamba3_state_update(held, **step, backend="cuda")
    mamba3_state_update(want, **step, backend="torch")
    for ours, theirs in zip(held, want, strict=True):
        assert relative_error(ours, theirs) < 1e-5
    with pytest.raises(ValueError, match=r"SISO kernels rotate \(2i, 2i\+1\) pairs"):
        mamba3_state_update(held, **step, rotate_pairwise=False, backend="cuda")


@pytest.mark.parametrize("major,stages", [(9, {1, 2, 3}), (10, {1}), (12, {1})])
def test_mamba3_siso_forward_is_never_pipelined_on_blackwell(major, stages, emulated_cuda, monkeypatch):
    """mamba-ssm 2.3.2.post1's mamba3_siso_fwd_kernel corrupts its output on Blackwell at num_stages
    > 1 (state-spaces/mamba #997, after the release): the backend prunes those configs there."""
    import triton
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_fwd import mamba3_siso_fwd_kernel

    from seqarena.ops import cuda

    monkeypatch.setattr(
        mamba3_siso_fwd_kernel, "configs", [triton.Config({}, num_stages=s) for s in (1, 2, 3)]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(cuda, "kernels", functools.cache(cuda.kernels.__wrapped__))
    assert cuda.kernels().reason is None
    assert {c.num_stages for c in mamba3_siso_fwd_kernel.configs} == stages


def test_mamba3_mimo_on_cuda_runs_mamba_ssms_mimo_wrapper(emulated_cuda):
    """mamba3_mimo (its wrapper as it is, the TileLang kernels standing in) at rank 4, from the start
    to its final states, at a length past two chunks and no multiple of one; then a chunk that
    continues from them (seqarena's chunked form: the kernel takes no initial states). Each against
    the torch backend."""
    inputs = mamba3_inputs(45, rank=4)
    options = dict(chunk_size=16, return_final_states=True)
    want, want_states = mamba3_chunk_scan(**inputs, **options, backend="torch")
    got, states = mamba3_chunk_scan(**inputs, **options, backend="cuda")
    assert got.shape == want.shape == (2, 45, 4, 4, 32)  # per rank: the mixer contracts with mimo_o
    assert relative_error(got, want) < 1e-5
    for ours, theirs in zip(states, want_states, strict=True):
        assert relative_error(ours, theirs) < 1e-5
    more = mamba3_inputs(20, rank=4, seed=3)
    continued = dict(chunk_size=16, initial_states=states)
    assert (
        relative_error(
            mamba3_chunk_scan(**more, **continued, backend="cuda"),
            mamba3_chunk_scan(**more, **continued, backend="torch"),
        )
        < 1e-6
    )
    with pytest.raises(ValueError, match=r"MIMO kernels rotate \(i, i \+ N/2\) pairs"):
        mamba3_chunk_scan(**inputs | dict(rotate_pairwise=True), chunk_size=16, backend="cuda")


def test_the_mimo_kernels_rotary_divisor_is_mamba_ssms_for_every_state_size():
    """mamba_ssm's Mamba3 passes rotary_dim_divisor = 2 / rope_fraction, and its kernel declares
    d_state // divisor angles: ours, from the shapes alone, agree at every d_state."""
    from seqarena.models.mamba3 import rope_angles
    from seqarena.ops.cuda import _rotary_dim_divisor

    for d_state in range(3, 260):
        for rope_fraction in (0.5, 1.0):
            angles = rope_angles(d_state, rope_fraction)
            if angles:
                assert _rotary_dim_divisor(d_state, angles) == int(2 / rope_fraction), d_state
                assert angles == d_state // int(2 / rope_fraction)
    with pytest.raises(ValueError, match="d_state 32 with 5 rotary angles is neither"):
        _rotary_dim_divisor(32, 5)


def test_without_tilelang_mimo_is_refused_on_cuda_naming_why_and_the_rest_runs(emulated_cuda, monkeypatch):
    """mamba_ssm's MIMO kernel imports apart from the rest, as mamba_ssm's own Mamba3 does: with the
    real TileLang modules (tilelang is not installed here) it does not, and only MIMO is refused."""
    from seqarena.ops import cuda

    for name in [m for m in sys.modules if m.startswith(TILELANG)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(cuda, "kernels", functools.cache(cuda.kernels.__wrapped__))
    assert cuda.kernels().reason is None and cuda.kernels().mamba3_mimo is None
    with pytest.raises(
        RuntimeError, match="MIMO kernel .TileLang. does not import .*No module named 'tilelang'"
    ):
        mamba3_chunk_scan(**mamba3_inputs(8, rank=4), chunk_size=8, backend="cuda")
    siso = mamba3_inputs(8)
    assert (
        relative_error(
            mamba3_chunk_scan(**siso, chunk_size=8, backend="cuda"),
            mamba3_chunk_scan(**siso, chunk_size=8, backend="torch"),
        )
        < 1e-4
    )


def test_the_env_self_check_passes_on_cuda(emulated_cuda):
    from seqarena.env import TOLERANCE, self_check

    record = self_check("cuda", torch.device("cpu"))
    assert record["passed"], record
    checked = {"scan", "ssd", "conv", "mamba3", "scan_grad_A", "ssd_grad_dt_bias", "conv_grad_weight"}
    assert checked | {"mamba3_grad_adt", "mamba3_grad_angles"} <= record["errors"].keys()
    assert record["max_relative_error"] < TOLERANCE[torch.float32]


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "mamba3_mimo"])
def test_a_bf16_autocast_training_step_runs_on_cuda_with_a_gpus_dtypes(arch, emulated_cuda, monkeypatch):
    """The interpreter's bfloat16 is not trusted for values: this checks that the step runs, that
    the kernels see the dtypes a GPU would (bf16 activations, float32 SSM parameters, which the
    stand-ins' binding checks enforce) and that every gradient is finite and float32."""
    torch.manual_seed(2)
    model = build_model(f"{arch}-tiny", vocab_size=VOCAB)
    run_on("cuda", monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, VOCAB, (2, 40)))
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), torch.randint(0, VOCAB, (80,))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all(), name


def test_a_call_a_gpu_would_refuse_is_refused(emulated_cuda):
    """The stand-ins enforce the bindings' checks: D in bfloat16 fails as TORCH_CHECK would."""
    u = torch.randn(1, 8, 5)
    with pytest.raises(BindingCheckFailed, match="D's dtype"):
        backends.selective_scan(
            u,
            u,
            -torch.ones(8, 4),
            torch.randn(1, 4, 5),
            torch.randn(1, 4, 5),
            D=torch.ones(8, dtype=torch.bfloat16),
            backend="cuda",
        )


def binding_arguments(source: str, function: str) -> list[str]:
    """The parameter names of a C++ function's definition (``f(const at::Tensor &x, ...)`` -> x, ...)."""
    found = re.search(
        rf"\n\s*(?:void|std::vector<at::Tensor>|at::Tensor)\s*\n?{function}\((.*?)\)\s*{{", source, re.S
    )
    assert found, f"no definition of {function} in the pinned source"
    params = re.sub(r"//[^\n]*", "", found[1]).split(",")
    return [re.search(r"(\w+)\s*$", p.strip())[1] for p in params]


@pytest.mark.parametrize("module,function", sorted(BINDINGS))
def test_each_stand_in_takes_the_pinned_bindings_argument_list(module, function, cuda_sources):
    folder, path = PINNED_SOURCES[module]
    with tarfile.open(cuda_sources / f"{folder}.tar.gz") as tar:
        source = tar.extractfile(f"{folder}/{path}").read().decode()
    bound = re.search(rf'm\.def\("{function}",\s*&(\w+)', source)
    assert bound, f"{module}.{function} is not bound in {folder}/{path}"
    cpp = binding_arguments(source, bound[1])
    ours = BINDINGS[module, function].split()
    assert ours == cpp, f"{module}.{function}: the stand-in takes {ours}, the binding {cpp}"


@pytest.mark.parametrize("module,function", sorted(k for k, v in TILELANG_KERNELS.items() if v))
def test_each_tilelang_stand_in_takes_the_pinned_kernels_argument_list(module, function, cuda_sources):
    folder = PINNED_SOURCES["selective_scan_cuda"][0]
    path = f"{folder}/{TILELANG.replace('.', '/')}/{module}.py"
    with tarfile.open(cuda_sources / f"{folder}.tar.gz") as tar:
        tree = ast.parse(tar.extractfile(path).read().decode())
    (pinned,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function]
    pinned_arguments = [a.arg for a in pinned.args.args + pinned.args.kwonlyargs]
    assert TILELANG_KERNELS[module, function].split() == pinned_arguments


def test_the_oracles_causal_conv1d_is_the_python_of_the_pinned_build(cuda_sources):
    """The oracle installs PyPI's causal-conv1d 1.6.1 (its Python only); the GPU env builds tag
    v1.6.1.post4. Their Python must be the same for the harness to stand for the build."""
    folder = PINNED_SOURCES["causal_conv1d_cuda"][0]
    with oracle_on_path(("causal_conv1d",), set()) as root:
        installed = {p.name: p.read_text() for p in (root / "causal_conv1d").glob("*.py")}
    with tarfile.open(cuda_sources / f"{folder}.tar.gz") as tar:
        pinned = {
            Path(m.name).name: tar.extractfile(m).read().decode()
            for m in tar.getmembers()
            if m.name.startswith(f"{folder}/causal_conv1d/") and m.name.endswith(".py")
        }
    assert pinned and pinned == installed


def test_kernels_json_and_gpu_checks_backend_rows_say_cuda_passed(emulated_cuda, tmp_path):
    """The env stage's record and `make gpu-check`'s backend rows, through the same code a GPU runs:
    float32 compared; bfloat16 runs (the interpreter's bf16 values are not compared)."""
    from seqarena.env import write_kernels_record

    record = write_kernels_record(tmp_path / "kernels.json", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cuda = json.loads((tmp_path / "kernels.json").read_text())["backends"]["cuda"]
    assert cuda["available"] and cuda["passed"] and cuda == record["backends"]["cuda"]

    rows = {r.check: r for r in gpu_check.backend_rows()}
    assert rows["backend cuda float32 vs float64 reference"].status == "passed"
    assert re.search(
        r"largest relative error \S+ \(", rows["backend cuda bfloat16 vs float64 reference"].result
    )
