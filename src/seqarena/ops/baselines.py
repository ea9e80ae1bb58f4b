"""The paper's other two baselines in its scan benchmark (Figure 8, left; Appendix E.5), in plain PyTorch.

- ``selective_scan_parallel``: "a standard scan implementation in PyTorch", the paper's PyTorch
  parallel scan: no fusion, every discretised factor (exp(dt A), dt B u) materialised as a
  (batch, dim, L, N) tensor in device memory, then a log-depth (Hillis-Steele) scan over L.
- ``fft_conv``: a long convolution through the FFT, as the convolutional SSMs (S4, H3) compute
  a sequence: a kernel as long as the sequence, O(L log L).

They are benchmark baselines only; the models never call them. Both are tested against the
references (scan.py, a direct convolution).
"""

import torch
import torch.nn.functional as F


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_softplus=False):
    """The selective scan (scan.py's semantics, B and C input-dependent (batch, N, L)) as a
    Hillis-Steele scan over materialised factors: x_t = a_t x_{t-1} + b_t for all t in
    ceil(log2 L) elementwise steps, each over (batch, dim, L, N)."""
    f = torch.promote_types(u.dtype, torch.float32)  # float32 for bf16 inputs, as the kernels compute
    dt = (F.softplus(delta) if delta_softplus else delta).to(f)[..., None]  # (batch, dim, L, 1)
    a = torch.exp(dt * A.to(f)[:, None, :])  # (batch, dim, L, N)
    b = dt * B.to(f).transpose(1, 2)[:, None] * u.to(f)[..., None]  # (batch, dim, L, N)
    length, offset = u.shape[-1], 1
    while offset < length:  # (a, b) at t composed with (a, b) at t - offset
        b = torch.cat([b[..., :offset, :], a[..., offset:, :] * b[..., :-offset, :] + b[..., offset:, :]], -2)
        a = torch.cat([a[..., :offset, :], a[..., offset:, :] * a[..., :-offset, :]], -2)
        offset *= 2
    y = torch.einsum("bdln,bnl->bdl", b, C.to(f))
    if D is not None:
        y = y + D.to(f)[:, None] * u.to(f)
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(u.dtype)


def fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Causal convolution of u (batch, dim, L) with a per-channel kernel (dim, L), through the FFT
    (zero-padded to 2L, so nothing wraps around), in float32 at least."""
    length, f = u.shape[-1], torch.promote_types(u.dtype, torch.float32)
    spectrum = torch.fft.rfft(u.to(f), n=2 * length) * torch.fft.rfft(kernel.to(f), n=2 * length)
    return torch.fft.irfft(spectrum, n=2 * length)[..., :length].to(u.dtype)
