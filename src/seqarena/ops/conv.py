"""Mamba's short causal depthwise convolution, with causal_conv1d's semantics: the reference.

``causal_conv1d(x, weight, bias, activation)`` takes x (batch, dim, L) and weight
(dim, width): output t of channel d sees inputs t-width+1 .. t of that channel only.
``causal_conv1d_update`` is the single-token step used in recurrent decoding.
``seqarena.ops.causal_conv1d`` runs the fastest backend available.
"""

import torch
import torch.nn.functional as F


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"causal_conv1d activation must be None, 'silu' or 'swish', not {activation!r}")


def causal_conv1d_torch(x, weight, bias=None, activation=None):
    """Depthwise causal convolution over the last axis of x (batch, dim, L)."""
    dim, width = weight.shape
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    return _activate(out, activation)


def causal_conv1d_update_torch(x, conv_state, weight, bias=None, activation=None):
    """One step: shift x (batch, dim) into conv_state (batch, dim, width) in place, convolve."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return _activate(out, activation).to(x.dtype)
