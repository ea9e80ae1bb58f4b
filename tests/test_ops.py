"""The selective scan (every CPU backend) and causal conv against recurrences written out here."""

import functools

import pytest
import torch
import torch.nn.functional as F

from seqarena.ops import (
    available_backends,
    backend_names,
    causal_conv1d,
    causal_conv1d_update,
    resolve_backend,
    selective_scan,
    selective_state_update,
)
from seqarena.ops.baselines import fft_conv, selective_scan_parallel
from seqarena.ops.scan import selective_scan_torch

f64 = torch.float64


def naive_scan(u, delta, A, B, C, D, z, delta_bias, softplus, groups_of):
    """Scalar-by-scalar recurrence: for each (b, d) a state vector over N, one t at a time.

    ``groups_of(BC, b, d, t)`` returns the (N,) input of channel d at time t.
    """
    batch, dim, length = u.shape
    outs, lasts = [], []
    for b in range(batch):
        for d in range(dim):
            x = torch.zeros(A.shape[1], dtype=f64)
            ys = []
            for t in range(length):
                dt = delta[b, d, t] + (delta_bias[d] if delta_bias is not None else 0)
                if softplus:
                    dt = torch.log1p(torch.exp(dt))
                x = torch.exp(dt * A[d]) * x + dt * groups_of(B, b, d, t) * u[b, d, t]
                y = (x * groups_of(C, b, d, t)).sum()
                if D is not None:
                    y = y + D[d] * u[b, d, t]
                if z is not None:
                    y = y * z[b, d, t] * torch.sigmoid(z[b, d, t])
                ys.append(y)
            outs.append(torch.stack(ys))
            lasts.append(x)
    out = torch.stack(outs).view(batch, dim, length)
    last = torch.stack(lasts).view(batch, dim, -1)
    return out, last


def pick(BC, b, d, t):
    if BC.dim() == 2:
        return BC[d]
    if BC.dim() == 3:
        return BC[b, :, t]
    per_group = 6 // BC.shape[1]  # dim is 6 in these tests
    return BC[b, d // per_group, :, t]


def make_inputs(batch=2, dim=6, length=7, N=4, bc="variable", groups=2):
    shapes = {"invariant": (dim, N), "variable": (batch, N, length), "grouped": (batch, groups, N, length)}
    return dict(
        u=torch.randn(batch, dim, length, dtype=f64),
        delta=torch.rand(batch, dim, length, dtype=f64) * 0.5,
        A=-torch.rand(dim, N, dtype=f64) - 0.2,
        B=torch.randn(*shapes[bc], dtype=f64),
        C=torch.randn(*shapes[bc], dtype=f64),
        D=torch.randn(dim, dtype=f64),
        z=torch.randn(batch, dim, length, dtype=f64),
        delta_bias=torch.randn(dim, dtype=f64) * 0.3,
    )


OPTIONS = [
    dict(D=True, z=True, delta_bias=True, softplus=True),
    dict(D=False, z=False, delta_bias=False, softplus=False),
    dict(D=True, z=False, delta_bias=True, softplus=False),
    dict(D=False, z=True, delta_bias=False, softplus=True),
]


CPU_BACKENDS = ["torch", "cpp"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bc", ["variable", "invariant", "grouped"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "plain")
@pytest.mark.parametrize("length", [1, 13])
def test_scan_matches_naive_recurrence(backend, bc, opts, length):
    x = make_inputs(length=length, bc=bc)
    D = x["D"] if opts["D"] else None
    z = x["z"] if opts["z"] else None
    bias = x["delta_bias"] if opts["delta_bias"] else None
    scan = functools.partial(selective_scan, backend=backend)
    out, last = scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D, z, bias, opts["softplus"], True)
    want_out, want_last = naive_scan(
        x["u"], x["delta"], x["A"], x["B"], x["C"], D, z, bias, opts["softplus"], pick
    )
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, want_last, rtol=1e-12, atol=1e-12)
    assert torch.equal(scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D, z, bias, opts["softplus"]), out)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bc", ["variable", "invariant", "grouped"])
def test_scan_gradients_match_naive_and_gradcheck(backend, bc):
    x = make_inputs(batch=2, dim=6, length=5, N=3, bc=bc)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    order = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

    def ours(*args):
        return selective_scan(*args, delta_softplus=True, backend=backend)

    def naive(*args):
        return naive_scan(*args, True, pick)[0]

    args = [leaves[k] for k in order]
    weights = torch.randn_like(x["u"])
    got = torch.autograd.grad((ours(*args) * weights).sum(), args)
    want = torch.autograd.grad((naive(*args) * weights).sum(), args)
    for name, g, w in zip(order, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    assert torch.autograd.gradcheck(ours, args, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(f64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("N,length", [(5, 9), (16, 40)])
def test_state_update_steps_equal_full_scan(backend, dtype, tol, N, length):
    x = {k: v.to(dtype) for k, v in make_inputs(batch=3, dim=6, length=length, N=N).items()}
    full = selective_scan(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, backend="torch"
    )
    state = torch.zeros(3, 6, N, dtype=dtype)
    steps = [
        selective_state_update(
            state,
            x["u"][..., t],
            x["delta"][..., t],
            x["A"],
            x["B"][..., t],
            x["C"][..., t],
            x["D"],
            x["z"][..., t],
            x["delta_bias"],
            True,
            backend=backend,
        )
        for t in range(length)
    ]
    torch.testing.assert_close(torch.stack(steps, -1), full, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16_inputs_are_scanned_in_float32(backend):
    x = {k: v.bfloat16() for k, v in make_inputs(length=64).items()}
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], backend=backend)
    want = selective_scan(*(x[k].double() for k in ["u", "delta", "A", "B", "C", "D", "z"]))
    assert out.dtype == torch.bfloat16
    # one bf16 rounding of the output, not 64 steps of bf16 accumulation
    torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_causal_conv_matches_direct_sum_and_its_step(backend):
    batch, dim, length, width = 2, 5, 11, 4
    x = torch.randn(batch, dim, length, dtype=f64)
    w = torch.randn(dim, width, dtype=f64)
    bias = torch.randn(dim, dtype=f64)
    want = torch.zeros(batch, dim, length, dtype=f64)
    for t in range(length):
        for k in range(width):  # tap k multiplies the input k steps back from the newest
            if t - k >= 0:
                want[:, :, t] += w[:, width - 1 - k] * x[:, :, t - k]
    want = F.silu(want + bias[:, None])
    torch.testing.assert_close(causal_conv1d(x, w, bias, "silu", backend=backend), want)
    state = torch.zeros(batch, dim, width, dtype=f64)
    steps = [causal_conv1d_update(x[..., t], state, w, bias, "silu", backend=backend) for t in range(length)]
    torch.testing.assert_close(torch.stack(steps, -1), want)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, bias, "gelu", backend=backend)


def test_backend_choice_on_cpu(monkeypatch):
    u = torch.zeros(1, 2, 3)
    assert backend_names() == ["cuda", "cpp", "torch"]
    assert available_backends(u) == ["cpp", "torch"]  # CI has a compiler: cpp must build
    assert resolve_backend(u) == "cpp"
    assert resolve_backend(u, "torch") == "torch"
    with pytest.raises(RuntimeError, match="'cuda' .*unavailable: no CUDA device"):
        resolve_backend(u, "cuda")
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        resolve_backend(u, "nope")
    monkeypatch.setenv("SEQARENA_SCAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="environment variable SEQARENA_SCAN_BACKEND"):
        resolve_backend(u)
    monkeypatch.setenv("SEQARENA_SCAN_BACKEND", "torch")
    assert resolve_backend(u) == "torch"


@pytest.mark.parametrize("length", [1, 37, 64])
def test_the_papers_pytorch_parallel_scan_baseline_is_the_selective_scan(length):
    """The benchmark's Hillis-Steele baseline against the step-by-step reference, float64: any
    length (not only powers of two), with D, the SiLU(z) gate and softplus."""
    g = torch.Generator().manual_seed(length)
    batch, dim, state = 2, 5, 4

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u, delta, z = rand(batch, dim, length), rand(batch, dim, length) - 1, rand(batch, dim, length)
    A = -torch.rand(dim, state, generator=g, dtype=torch.float64) - 0.5
    B, C, D = rand(batch, state, length), rand(batch, state, length), rand(dim)
    want = selective_scan_torch(u, delta, A, B, C, D, z, delta_softplus=True)
    got = selective_scan_parallel(u, delta, A, B, C, D, z, delta_softplus=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_the_fft_convolution_baseline_is_a_causal_convolution():
    """Against a direct convolution (F.conv1d, padded on the left), a kernel as long as the input."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 50, generator=g, dtype=torch.float64)
    kernel = torch.randn(3, 50, generator=g, dtype=torch.float64)
    direct = F.conv1d(F.pad(u, (49, 0)), kernel.flip(-1).unsqueeze(1), groups=3)
    torch.testing.assert_close(fft_conv(u, kernel), direct, rtol=1e-10, atol=1e-10)
