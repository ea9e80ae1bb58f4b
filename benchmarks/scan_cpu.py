"""Selective scan on the CPU: every backend side by side, with ratios and the compute floor.

    python benchmarks/scan_cpu.py                   # B=8, L=512, D=512, N=16, float32
    python benchmarks/scan_cpu.py --length 1024 --slow-repeats 0

Rows: seqarena's ``cpp`` and ``torch`` backends, a materialised reference in the style of
mamba_ssm's ``selective_scan_ref`` (every (B, D, L, N) factor built up front, then a loop
over L), and mambapy's parallel scan (if ``mambapy`` is installed). All compute the same
thing: softplus(delta + bias), the scan, the D skip and the SiLU gate by z, on u, delta and z
in the layout Mamba's mixer passes them: (B, D, L) views of (B, L, D) tensors. The floor is
what the forward cannot go below here: B*D*L*N exponentials at the measured exp rate plus
reading the inputs and writing the output at the measured copy bandwidth.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seqarena.ops import selective_scan


def materialised_reference(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's selective_scan_ref algorithm: all (B, D, L, N) factors first, then loop."""
    delta = F.softplus(delta + delta_bias[:, None])
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_A[:, :, i] * x + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    return (torch.stack(ys, dim=2) + u * D[:, None]) * F.silu(z)


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """mambapy's selective_scan (Blelloch pscan over (B, L, ED, N)), same semantics as ours."""
    from mambapy.pscan import pscan

    x, dt = u.transpose(1, 2), F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (B, L, ED)
    delta_A = torch.exp(dt.unsqueeze(-1) * A)
    bx = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
    hs = pscan(delta_A, bx)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


def backend(name):
    def run(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend=name)

    return run


def time_call(fn, repeats):
    """Median wall time of ``repeats`` calls after one warm-up call; None if repeats is 0."""
    if repeats == 0:
        return None
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(method, inputs, repeats):
    def forward():
        with torch.no_grad():
            method(*inputs)

    def forward_backward():
        leaves = [t.detach().requires_grad_() for t in inputs]
        method(*leaves).sum().backward()

    return time_call(forward, repeats), time_call(forward_backward, repeats)


def floor_seconds(batch, dim, length, state):
    """Exponentials at the measured rate + input/output bytes at the measured copy bandwidth."""
    big = torch.randn(batch * dim * length * state // 4)
    out = torch.empty_like(big)  # preallocated: time the arithmetic, not page faults
    exp_rate = big.numel() / time_call(lambda: torch.exp(big, out=out), 5)
    copy_rate = big.numel() * 4 * 2 / time_call(lambda: out.copy_(big), 5)  # read + write
    io_bytes = 4 * (4 * batch * dim * length + 2 * batch * state * length)  # u, delta, z, out; B, C
    return batch * dim * length * state / exp_rate + io_bytes / copy_rate, exp_rate, copy_rate


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the fast rows")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed calls of the loop references")
    args = parser.parse_args()
    b, d, L, n = args.batch, args.dim, args.length, args.state

    g = torch.Generator().manual_seed(0)

    def activations(shift=0.0):
        """(b, d, L) views of (b, L, d) tensors: the layout Mamba's mixer passes (channels contiguous)."""
        return (torch.randn(b, L, d, generator=g) + shift).transpose(1, 2)

    inputs = [
        activations(),  # u
        activations(-2),  # delta (softplus ~ 0.1)
        -torch.rand(d, n, generator=g) - 0.5,  # A
        torch.randn(b, n, L, generator=g),  # B
        torch.randn(b, n, L, generator=g),  # C
        torch.randn(d, generator=g),  # D
        activations(),  # z
        torch.zeros(d),  # delta_bias
    ]
    methods = {"seqarena cpp": (backend("cpp"), args.repeats)}
    methods["seqarena torch (reference)"] = (backend("torch"), args.slow_repeats)
    methods["materialised ref (mamba_ssm style)"] = (materialised_reference, args.slow_repeats)
    try:
        import mambapy.pscan  # noqa: F401

        methods["mambapy pscan"] = (mambapy_scan, args.repeats)
    except ImportError:
        print("mambapy is not installed: its row is left out (pip install mambapy)")

    want = backend("torch")(*inputs)
    floor, exp_rate, copy_rate = floor_seconds(b, d, L, n)
    print(f"B={b} D={d} L={L} N={n} float32, {torch.get_num_threads()} threads")
    print(f"floor: {floor * 1e3:.1f} ms (exp {exp_rate / 1e9:.2f} G/s, copy {copy_rate / 1e9:.1f} GB/s)\n")
    rows = []
    for name, (method, repeats) in methods.items():
        error = (method(*inputs) - want).abs().max().item() / want.abs().max().item()
        fwd, fwd_bwd = measure(method, inputs, repeats)
        rows.append((name, fwd, fwd_bwd, error))

    cpp_fwd, cpp_fwd_bwd = rows[0][1], rows[0][2]
    print("| method | fwd ms | fwd+bwd ms | cpp speed-up fwd | cpp speed-up fwd+bwd | max rel. error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, fwd, fwd_bwd, error in rows:

        def ms(t):
            return f"{t * 1e3:.1f}" if t is not None else "-"

        def ratio(t, ours):
            return f"{t / ours:.1f}x" if t is not None else "-"

        print(
            f"| {name} | {ms(fwd)} | {ms(fwd_bwd)} | {ratio(fwd, cpp_fwd)} | "
            f"{ratio(fwd_bwd, cpp_fwd_bwd)} | {error:.1e} |"
        )
    print(f"\ncpp forward / floor: {cpp_fwd / floor:.2f}x")


if __name__ == "__main__":
    main()
