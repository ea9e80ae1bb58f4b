"""The cpp backend (csrc/) against the torch references on fresh inputs: scan, step and conv."""

import pytest
import torch
import torch.nn.functional as F

from seqarena.models import build_model
from seqarena.models.mamba import SSM_DEFAULTS, MambaMixer
from seqarena.ops import available_backends, causal_conv1d, cpp, fused_mamba_inner, selective_scan

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def inputs(batch, dim, length, N, dtype, bc="variable", groups=1):
    g = torch.Generator().manual_seed(hash((batch, dim, length, N, bc)) % 2**31)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    bc_shape = {"variable": (batch, N, length), "grouped": (batch, groups, N, length), "invariant": (dim, N)}[
        bc
    ]
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 2,  # softplus sees negative and large inputs
        "A": -torch.rand(dim, N, generator=g, dtype=dtype) * 2 - 0.1,
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim) * 0.5,
    }


def run(x, backend, last_state_weight=None):
    """Output, final state and the gradient of every input under a random linear loss."""
    leaves = [x[k].detach().requires_grad_() for k in NAMES]  # a view: the layout is kept (clone's is not)
    out, last = selective_scan(*leaves, delta_softplus=True, return_last_state=True, backend=backend)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    if last_state_weight is not None:
        loss = loss + (last * last_state_weight).sum()
    return out, last, torch.autograd.grad(loss, leaves)


def assert_matches_reference(x, rtol, last_state_weight=None):
    out, last, grads = run(x, "cpp", last_state_weight)
    want_out, want_last, want_grads = run(x, "torch", last_state_weight)
    torch.testing.assert_close(out, want_out, rtol=rtol, atol=rtol * want_out.abs().max().item())
    torch.testing.assert_close(last, want_last, rtol=rtol, atol=rtol * want_last.abs().max().item())
    for name, got, want in zip(NAMES, grads, want_grads, strict=True):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, msg=f"gradient of {name}")


SHAPES = [  # (batch, dim, length, N): L = 1, primes, beyond one 32-step chunk; B*D odd; blocks of 16
    # channels: one partial, two full and a partial one (37), split between threads (batch 1)
    (1, 1, 1, 1),
    (2, 3, 7, 4),
    (3, 7, 67, 16),
    (1, 5, 131, 4),
    (2, 9, 200, 1),
    (1, 37, 75, 16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_matches_reference(shape):
    assert_matches_reference(inputs(*shape, torch.float64), rtol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_matches_reference(shape):
    assert_matches_reference(inputs(*shape, torch.float32), rtol=1e-4)


def test_pre_activations_where_exp_overflows_float_match_reference():
    """A gate z or a delta pre-activation far below -88, where exp(-x) overflows float (a model
    trained without weight decay drives delta's there on noise tokens), gives the reference's
    finite outputs and gradients, as does a conv input under its SiLU."""
    x = inputs(2, 37, 75, 16, torch.float32)
    for key, t in (("z", 4), ("z", 40), ("delta", 9), ("delta", 60)):
        x[key][1, 5, t] = x[key][0, 30, t] = -120.0
    x["delta"][0, 2, 11] = 120.0
    assert_matches_reference(x, rtol=1e-5)
    conv_input = torch.randn(2, 37, 67, generator=torch.Generator().manual_seed(5))
    conv_input[0, 3, 10] = conv_input[1, 36, 66] = -300.0
    weight = torch.rand(37, 4, generator=torch.Generator().manual_seed(6))
    assert_conv_matches_reference(conv_input, weight, torch.zeros(37), "silu", torch.ones(2, 37, 67), 1e-5)


@pytest.mark.parametrize("bc", ["grouped", "invariant"])
def test_other_bc_layouts_match_reference(bc):
    assert_matches_reference(inputs(2, 6, 70, 4, torch.float64, bc=bc, groups=3), rtol=1e-9)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """(batch, dim, L) with channels contiguous: a view of a (batch, L, dim) tensor, as Mamba's mixer
    passes its activations."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def test_strided_rows_are_read_in_place():
    """u and z as halves of one bigger tensor (as in_proj's output is split), time contiguous."""
    x = inputs(2, 6, 80, 16, torch.float64)
    xz = torch.cat([x["u"], x["z"]], dim=1)  # (batch, 2 dim, L)
    u, z = xz.chunk(2, dim=1)
    assert not u.is_contiguous() and u.stride(-1) == 1
    x_strided = {**x, "u": u, "z": z}
    assert_matches_reference(x_strided, rtol=1e-9)


@pytest.mark.parametrize("bc", ["variable", "grouped", "invariant"])
def test_channels_last_views_match_reference(bc):
    """u, delta and z as (batch, L, dim) halves viewed (batch, dim, L), as the mixer passes them: 40
    channels in two groups of 20, so a group's blocks of 16 end in a partial one."""
    x = inputs(2, 40, 75, 16, torch.float64, bc=bc, groups=2)
    xz = torch.cat([x["u"].transpose(1, 2), x["z"].transpose(1, 2)], dim=-1)  # (batch, L, 2 dim)
    u, z = (t.transpose(1, 2) for t in xz.chunk(2, dim=-1))
    assert u.stride(1) == 1 and not u.is_contiguous()
    assert_matches_reference({**x, "u": u, "z": z, "delta": channels_last(x["delta"])}, rtol=1e-9)


def test_outputs_and_gradients_keep_the_channels_last_layout():
    """So that out_proj reads the scan's output, and in_proj's backward its gradients, without a copy."""
    x = {k: v.requires_grad_() for k, v in inputs(2, 20, 9, 4, torch.float32).items()}
    u, delta, z = (channels_last(x[k].detach()).requires_grad_() for k in ("u", "delta", "z"))
    out = selective_scan(u, delta, x["A"], x["B"], x["C"], x["D"], z, x["delta_bias"], True, backend="cpp")
    assert out.transpose(1, 2).is_contiguous()
    out.sum().backward()
    for grad in (u.grad, delta.grad, z.grad):
        assert grad.transpose(1, 2).is_contiguous()
    conv = causal_conv1d(u, torch.randn(20, 4, requires_grad=True), None, "silu", backend="cpp")
    assert conv.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["silu", None])
def test_causal_conv_matches_reference(dtype, rtol, bias, activation):
    g = torch.Generator().manual_seed(3)
    big = torch.randn(3, 10, 67, generator=g, dtype=dtype)
    x = big[:, 2:7]  # strided rows, as a slice of in_proj's output
    weight = torch.randn(5, 4, generator=g, dtype=dtype)
    b = torch.randn(5, generator=g, dtype=dtype) if bias else None
    grad = torch.randn(3, 5, 67, generator=g, dtype=dtype)
    assert_conv_matches_reference(x, weight, b, activation, grad, rtol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_causal_conv_of_channels_last_views_matches_reference(dtype, rtol):
    """37 channels (blocks of 16 and a partial one), x half of a (batch, L, 2 dim) tensor."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 67, 74, generator=g, dtype=dtype)[..., :37].transpose(1, 2)
    weight = torch.randn(37, 4, generator=g, dtype=dtype)
    b = torch.randn(37, generator=g, dtype=dtype)
    grad = channels_last(torch.randn(2, 37, 67, generator=g, dtype=dtype))
    assert_conv_matches_reference(x, weight, b, "silu", grad, rtol)


def assert_cpp_matches_torch(run, rtol):
    """``run(backend)`` gives (output, gradients): cpp's against torch's."""
    out, grads = run("cpp")
    want, want_grads = run("torch")
    torch.testing.assert_close(out, want, rtol=rtol, atol=rtol)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def assert_conv_matches_reference(x, weight, b, activation, grad, rtol):
    bias = b is not None

    def run(backend):
        xs, ws = x.detach().requires_grad_(), weight.clone().requires_grad_()  # x's layout kept
        bs = b.clone().requires_grad_() if bias else None
        out = causal_conv1d(xs, ws, bs, activation, backend=backend)
        leaves = [t for t in (xs, ws, bs) if t is not None]
        return out, torch.autograd.grad((out * grad).sum(), leaves)

    assert_cpp_matches_torch(run, rtol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_the_fused_mixer_matches_the_references_composed(monkeypatch, dtype, rtol, conv_bias):
    """Mamba-1's mixer after in_proj on cpp, one op whose backward writes x's and z's gradients
    into one tensor, against the same mixer on the torch references, composed op by op: the output
    and the gradient of xz and every parameter. 40 channels are two blocks of 16
    and a partial one; 70 steps are three scan chunks and two conv tiles."""
    torch.manual_seed(3)
    mixer = MambaMixer(20, **{**SSM_DEFAULTS, "d_state": 16, "dt_rank": 3, "conv_bias": conv_bias}).to(dtype)
    with torch.no_grad():  # off the initialisation, so that every parameter matters
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    xz = torch.randn(2, 70, 80, dtype=dtype)
    grad = torch.randn(2, 70, 20, dtype=dtype)
    assert fused_mamba_inner(xz, "cpp") is not None and fused_mamba_inner(xz, "torch") is None

    weights = [p for name, p in mixer.named_parameters() if not name.startswith("in_proj")]

    def run(backend):
        monkeypatch.setenv("SEQARENA_SCAN_BACKEND", backend)
        leaves = [xz.clone().requires_grad_(), *weights]
        out = mixer._mix(leaves[0])
        return out, torch.autograd.grad((out * grad).sum(), leaves)

    assert_cpp_matches_torch(run, rtol)


@pytest.mark.parametrize("bc", ["variable", "invariant"])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_a_scan_from_the_state_of_the_first_half_continues_the_whole(bc, backend):
    """The oracle is the torch reference over the whole sequence: split at 70 (past two 32-step chunks
    of the cpp kernel), the second half started from the first's last state gives its outputs."""
    x = inputs(2, 6, 130, 16, torch.float64, bc)
    whole, whole_last = selective_scan(
        *(x[k] for k in NAMES), delta_softplus=True, return_last_state=True, backend="torch"
    )
    time = {k for k in ("u", "delta", "z")} | ({"B", "C"} if bc == "variable" else set())
    first = {k: x[k][..., :70] if k in time else x[k] for k in NAMES}
    second = {k: x[k][..., 70:] if k in time else x[k] for k in NAMES}
    scan = dict(delta_softplus=True, return_last_state=True, backend=backend)
    head, state = selective_scan(*first.values(), **scan)
    tail, last = selective_scan(*second.values(), initial_state=state, **scan)
    torch.testing.assert_close(torch.cat([head, tail], -1), whole, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, whole_last, rtol=1e-10, atol=1e-10)


def test_the_cpp_scan_refuses_a_gradient_from_an_initial_state():
    x = {k: v.requires_grad_() for k, v in inputs(1, 2, 8, 16, torch.float64).items()}
    with pytest.raises(NotImplementedError, match="no backward from an initial_state"):
        selective_scan(*x.values(), initial_state=torch.zeros(1, 2, 16, dtype=torch.float64), backend="cpp")


def test_gradient_through_the_last_state():
    x = inputs(2, 3, 90, 4, torch.float64)
    assert_matches_reference(x, rtol=1e-9, last_state_weight=torch.randn(2, 3, 4, dtype=torch.float64))


def test_bfloat16_in_float32_accumulate():
    x = {k: v.bfloat16() for k, v in inputs(2, 8, 100, 16, torch.float32).items()}
    out = selective_scan(*x.values(), delta_softplus=True, backend="cpp")
    want = selective_scan(*(v.float() for v in x.values()), delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)


def test_threads_do_not_change_results():
    x = inputs(3, 7, 150, 16, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(x, "cpp")
        torch.set_num_threads(max(2, threads))
        many = run(x, "cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0])
    for a, b in zip(one[2], many[2], strict=True):  # dB, dC, dA are summed in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tiny_mamba_trains_identically_on_cpp_and_torch(monkeypatch):
    def losses(backend):
        monkeypatch.setenv("SEQARENA_SCAN_BACKEND", backend)
        torch.manual_seed(0)
        model = build_model("mamba-tiny", vocab_size=50).double()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 50, (4, 70), generator=torch.Generator().manual_seed(0))
        out = []
        for _ in range(5):
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    cpp_losses, torch_losses = losses("cpp"), losses("torch")
    assert cpp_losses[-1] < cpp_losses[0]
    assert cpp_losses == pytest.approx(torch_losses, rel=1e-9)


def test_a_finished_build_is_imported_without_a_compiler(monkeypatch):
    """A fresh clone or venv on a machine that built the kernels before: the library is imported
    as it is, with no compiler and no ninja (ninja would rebuild it, its paths being new)."""
    assert cpp._load()[0] is not None  # built (or imported) once in this extensions folder
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    cpp._load.cache_clear()
    try:
        assert cpp._load()[1] is None
        x = inputs(2, 3, 5, 4, torch.float64)
        torch.testing.assert_close(selective_scan(**x, backend="cpp"), selective_scan(**x, backend="torch"))
    finally:
        cpp._load.cache_clear()


def test_a_finished_build_that_no_longer_loads_is_built_again(monkeypatch, tmp_path):
    """A library left in the build folder that does not import (a truncated file): a warning,
    the marker goes, and the build runs again (here it cannot: no compiler, and that is said)."""
    monkeypatch.setenv("SEQARENA_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    folder = cpp._build_dir()
    folder.mkdir(parents=True)
    (folder / f"{cpp.MODULE}.so").write_bytes(b"\x7fELF truncated")
    (folder / cpp.BUILT).touch()
    cpp._load.cache_clear()
    try:
        with pytest.warns(UserWarning) as warned:
            module, reason = cpp._load()
        assert module is None and "no-such-compiler" in reason
        assert any("rebuilding the C++ kernels" in str(w.message) for w in warned)
        assert not (folder / cpp.BUILT).exists()
    finally:
        cpp._load.cache_clear()


def test_missing_compiler_is_reported_and_torch_is_chosen(monkeypatch, tmp_path):
    """A machine without a C++ compiler: a clear warning and reason, automatic choice uses torch."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SEQARENA_EXTENSIONS_DIR", str(tmp_path / "ext"))
    cpp._load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="cpp scan backend is unavailable: no C\\+\\+ compiler"):
            reason = cpp._why_not(torch.zeros(1, 1, 1))
        assert "no-such-compiler" in reason
        assert available_backends(torch.zeros(1, 1, 1)) == ["torch"]
        with pytest.raises(RuntimeError, match="'cpp' .*unavailable: no C\\+\\+ compiler"):
            selective_scan(*inputs(1, 2, 3, 4, torch.float32).values(), backend="cpp")
    finally:
        cpp._load.cache_clear()
