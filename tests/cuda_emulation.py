"""The ``cuda`` backend on a CPU: mamba_ssm's and causal_conv1d's own Python and Triton code, run.

seqarena's cuda backend calls mamba_ssm (2.3.2.post1) and causal_conv1d (1.6.1, the Python of
tag v1.6.1.post4, which the GPU env builds) as a GPU would. Here that same code runs on CPU
tensors, with these substitutions and nothing else:

- **The compiled extensions** ``selective_scan_cuda`` and ``causal_conv1d_cuda`` are modules of
  stand-ins. Each takes the C++ binding's exact argument list (tests/test_cuda_emulation.py checks
  it against the pinned sources' ``csrc/``), enforces the binding's dtype, shape and stride checks
  (a call that would fail a ``TORCH_CHECK`` on a GPU fails here), and computes the package's own
  pure-PyTorch reference (``selective_scan_ref``, ``causal_conv1d_ref``,
  ``causal_conv1d_update_ref``), writing into the buffers the binding writes into. Backward passes
  are autograd of those references. causal-conv1d wraps its calls in ``torch.library.custom_op``,
  whose body runs below autograd's (thread-local) dispatch key, so the backward's autograd runs in
  a fresh thread, where autograd records again. Outputs the references have no counterpart for
  (the scan's per-chunk intermediates apart from the last state) are NaN, so a reader of them fails.
- **The Triton kernels** (Mamba-2's SSD, ``selective_state_update``, the gated RMSNorm) really run,
  under Triton's interpreter (``TRITON_INTERPRET=1``), with these shims: ``torch.cuda.device(i)``
  is a no-op (CPU tensors have no index), ``torch.cuda.get_device_properties`` reports 4
  multiprocessors (they size some grids), the autotuner takes each kernel's first config
  instead of timing them all, the interpreter's scalars convert to int through ``.item()``
  (numpy 2.4 refuses ``int()`` of the one-element arrays that triton 3.6's interpreter holds),
  and it skips the integer-overflow checks that only Triton's debug mode asserts (off, as on a
  GPU by default; a compiled kernel drops them, the interpreter would compute them for nothing).
  The interpreter's bfloat16 is not to be trusted (a kernel run in bfloat16 was off by 1e10
  here, right in float32), so values are compared in float32 only.
- **Mamba-3's Triton kernels** compute cos, sin and tanh with PTX approximations
  (``cos.approx.f32`` and the like in inline assembly), which the interpreter cannot run: they
  are numpy's functions here. Its SISO wrapper casts its inputs to bfloat16, and its forward
  keeps chunk states in bfloat16: float32 here, for the reason above. Its backward's Python asserts
  that every tensor is on CUDA: while its four backward functions run, tensors say they are.
- **Mamba-3's TileLang MIMO kernels** (``mamba_ssm/ops/tilelang/mamba3/``: a GPU compiler, no
  interpreter) are modules of stand-ins. The forward computes mamba_ssm's own MIMO test reference
  (``mamba3_MIMO_chunk_ref``, which its tests hold the kernel to), gating with z only where it
  contracts with mimo_o, as the kernel does, and enforcing the dtypes its tensors are declared
  with; the backward is autograd of it. Their wrapper
  (``mamba3_mimo.py``, its autograd Function and Triton angle and decay kernels) runs as it is.
  Each stand-in takes the pinned module's argument list (tests/test_cuda_emulation.py checks it).
- **Autocast:** CUDA's autocast cannot be enabled without CUDA, so CPU autocast stands in for it:
  ``torch.is_autocast_enabled()`` (no argument: CUDA's, which mamba_ssm asks) answers for the CPU,
  and ``torch.get_autocast_gpu_dtype()`` gives the CPU's autocast dtype.
- **seqarena's gate** ("the cuda backend runs on CUDA tensors") is lifted inside the context only.

``cuda_backend_on_cpu("compiled for sm_90")`` keeps the stand-in extensions and the shims of CUDA
but not the interpreter: the Triton kernels compile, for an H100 (sm_90, 132 multiprocessors), with
Triton's own compiler and the ptxas it ships, through a Triton driver for a machine without a GPU.
A launch compiles its kernel, checks the shared memory it needs against an H100's (227 KiB;
Triton's OutOfResources, as on the GPU), then fails (nothing can run): only
``seqarena.ops.triton_compile.compile_ahead``, which compiles and launches nothing, runs a workload
there (tests/test_triton_compile.py, benchmarks/triton_compile_cpu.py), or, within
``launches_doing_nothing``, a workload whose launches return without running once they pass that
check (its values are garbage; which kernels it compiles and launches are the GPU's).

``make oracle`` puts both packages' Python sources, triton and einops in
$SEQARENA_MAMBA_SSM_REFERENCE (beside the venv, never in it); they are forgotten on exit.
"""

import dataclasses
import inspect
import os
import sys
import threading
import types
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from mamba_ssm_reference import load_fixture, oracle_on_path

# The binding's argument lists, in order: csrc/selective_scan/selective_scan.cpp (mamba 2.3.2.post1)
# and csrc/causal_conv1d.cpp (causal-conv1d 1.6.1.post4). The stand-ins below take exactly these.
BINDINGS = {
    ("selective_scan_cuda", "fwd"): "u delta A B C D_ z_ delta_bias_ delta_softplus",
    ("selective_scan_cuda", "bwd"): (
        "u delta A B C D_ z_ delta_bias_ dout x_ out_ dz_ delta_softplus recompute_out_z"
    ),
    ("causal_conv1d_cuda", "causal_conv1d_fwd"): (
        "x weight bias_ seq_idx_ initial_states_ out final_states_out_ silu_activation"
    ),
    ("causal_conv1d_cuda", "causal_conv1d_bwd"): (
        "x weight bias_ dout seq_idx_ initial_states_ dfinal_states_ dx dweight dbias_ dinitial_states_ "
        "silu_activation"
    ),
    ("causal_conv1d_cuda", "causal_conv1d_update"): (
        "x conv_state weight bias_ out silu_activation cache_seqlens_ conv_state_indices_"
    ),
}
# mamba_ssm 2.3.2.post1's TileLang kernels that its MIMO wrapper calls (mamba_ssm/ops/tilelang/mamba3/
# <module>.py), with their argument lists; the varlen ones are not called here and raise if they are.
TILELANG = "mamba_ssm.ops.tilelang.mamba3"
TILELANG_KERNELS = {
    ("mamba3_mimo_fwd", "mamba_mimo_forward"): (
        "q k v q_bias k_bias mimo_v mimo_o z D mimo_z angles dA_cs dA_cs_rev dt trap segsum chunk_size "
        "rotary_dim_divisor dtype return_state threads num_stages"
    ),
    ("mamba3_mimo_bwd", "mamba_mimo_bwd_combined"): (
        "dout q k v q_bias k_bias mimo_v mimo_o z mimo_z angles dA_cs dA_cs_rev dt trap D segsum "
        "chunk_size rotary_dim_divisor dtype bf_threads bf_num_stages bb_threads bb_num_stages"
    ),
    ("mamba3_mimo_fwd_varlen", "mamba_mimo_forward_varlen"): None,
    ("mamba3_mimo_bwd_varlen", "mamba_mimo_bwd_combined_varlen"): None,
}
FORGOTTEN = {"mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda"}
INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# what torch.cuda.get_device_properties reports: 4 multiprocessors under the interpreter (small
# grids), an H100's 132 where the kernels compile for one
FOUR_MULTIPROCESSORS = types.SimpleNamespace(multi_processor_count=4, gcnArchName="")
H100 = types.SimpleNamespace(multi_processor_count=132, gcnArchName="")
H100_SHARED_MEMORY = 227 * 1024  # bytes a block may have (opt-in), what Triton checks a launch against


class BindingCheckFailed(RuntimeError):
    """What a TORCH_CHECK in the C++ binding raises on a GPU."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise BindingCheckFailed(f"TORCH_CHECK failed: {what}")


def check_shape(t: torch.Tensor, *shape, name: str) -> None:
    check(tuple(t.shape) == shape, f"{name} has shape {tuple(t.shape)}, the binding expects {shape}")


def in_fresh_thread(fn):
    """fn() in a new thread, where autograd records even inside a custom_op's body."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _grads(fn, inputs: dict, dout: torch.Tensor) -> dict:
    """{name: d(sum(fn(**inputs) * dout))/d input} for every tensor input that is floating point."""

    def run():
        with torch.enable_grad():
            leaves = {
                k: v.detach().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in inputs.items()
            }
            out = fn(**leaves)
            wrt = [k for k, v in leaves.items() if torch.is_tensor(v) and v.requires_grad]
            got = torch.autograd.grad(out, [leaves[k] for k in wrt], dout, allow_unused=True)
            return {
                k: (torch.zeros_like(leaves[k]) if g is None else g) for k, g in zip(wrt, got, strict=True)
            }

    return in_fresh_thread(run)


def fill_selective_scan(module: types.ModuleType, selective_scan_ref) -> None:
    """``selective_scan_cuda``: fwd and bwd with the binding's arguments, over ``selective_scan_ref``."""

    def check_inputs(u, delta, A, B, C, D_, z_, delta_bias_):
        check(u.dtype in INPUT_DTYPES, f"u's dtype {u.dtype} (float32, float16 or bfloat16)")
        check(A.dtype == torch.float32, f"A's dtype {A.dtype} (float32; complex is not emulated)")
        check(delta.dtype == u.dtype, f"delta's dtype {delta.dtype} == u's {u.dtype}")
        for name, t in (("B", B), ("C", C)):
            variable = t.dim() >= 3
            check(t.dtype == (u.dtype if variable else A.dtype), f"{name}'s dtype {t.dtype}")
            if variable:
                check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1")
        batch, dim, length = u.shape
        dstate = A.shape[1]
        check(dstate <= 256, "selective_scan only supports state dimension <= 256")
        check_shape(delta, batch, dim, length, name="delta")
        check_shape(A, dim, dstate, name="A")
        for name, t in (("u", u), ("delta", delta)):
            check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1")
        for name, t in (("D", D_), ("delta_bias", delta_bias_)):
            if t is not None:
                check(t.dtype == torch.float32, f"{name}'s dtype {t.dtype} (float32)")
                check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1")
                check_shape(t, dim, name=name)
        if z_ is not None:
            check(z_.dtype == u.dtype, f"z's dtype {z_.dtype} == u's {u.dtype}")
            check(z_.stride(-1) == 1 or z_.size(-1) == 1, "z.stride(-1) == 1")
            check_shape(z_, batch, dim, length, name="z")

    def scan(u, delta, A, B, C, D_, z_, delta_bias_, delta_softplus):
        return selective_scan_ref(
            u, delta, A, B, C, D_, z_, delta_bias_, delta_softplus, return_last_state=True
        )

    def fwd(u, delta, A, B, C, D_, z_, delta_bias_, delta_softplus):
        check_inputs(u, delta, A, B, C, D_, z_, delta_bias_)
        out_z, last_state = scan(u, delta, A, B, C, D_, z_, delta_bias_, delta_softplus)
        out = scan(u, delta, A, B, C, D_, None, delta_bias_, delta_softplus)[0] if z_ is not None else out_z
        # (batch, dim, chunks of 2048 steps, 2 dstate): only the last chunk's state (odd entries) is real
        chunks = -(-u.shape[-1] // 2048)
        x = torch.full((*u.shape[:2], chunks, 2 * A.shape[1]), float("nan"), dtype=torch.float32)
        x[:, :, -1, 1::2] = last_state.float()
        return [out, x] + ([out_z] if z_ is not None else [])

    def bwd(u, delta, A, B, C, D_, z_, delta_bias_, dout, x_, out_, dz_, delta_softplus, recompute_out_z):
        check_inputs(u, delta, A, B, C, D_, z_, delta_bias_)
        check(dout.dtype == u.dtype, f"dout's dtype {dout.dtype} == u's {u.dtype}")
        check(dout.stride(-1) == 1 or dout.size(-1) == 1, "dout.stride(-1) == 1")
        if z_ is not None:
            check(out_ is not None, "out is given when z is")

        def loss(u, delta, A, B, C, D, z, delta_bias):
            return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)[0]

        g = _grads(loss, dict(u=u, delta=delta, A=A, B=B, C=C, D=D_, z=z_, delta_bias=delta_bias_), dout)
        grads = [g["u"], g["delta"], g["A"], g["B"], g["C"]]
        grads += [g["D"] if D_ is not None else None, g["delta_bias"] if delta_bias_ is not None else None]
        if z_ is None:
            return grads
        if dz_ is not None:  # the binding writes dz into the given tensor (mamba_inner_fn's dxz half)
            dz_.copy_(g["z"])
        rest = [dz_ if dz_ is not None else g["z"].to(z_.dtype)]
        if recompute_out_z:
            rest.append(scan(u, delta, A, B, C, D_, z_, delta_bias_, delta_softplus)[0])
        return grads + rest

    _fill(module, fwd=fwd, bwd=bwd)


def fill_causal_conv1d(module: types.ModuleType, causal_conv1d_ref, causal_conv1d_update_ref) -> None:
    """``causal_conv1d_cuda``: fwd, bwd and update with the binding's arguments, over the references."""

    def check_inputs(x, weight, bias_):
        check(x.dtype in INPUT_DTYPES, f"x's dtype {x.dtype}")
        check(weight.dtype in INPUT_DTYPES, f"weight's dtype {weight.dtype}")
        batch, dim, length = x.shape
        width = weight.shape[-1]
        check_shape(weight, dim, width, name="weight")
        check(x.stride(2) == 1 or x.stride(1) == 1, "x.stride(2) == 1 || x.stride(1) == 1")
        channel_last = x.stride(1) == 1 and x.stride(2) > 1
        if channel_last:
            check(dim % 8 == 0, "causal_conv1d only supports channel dimension divisible by 8 for now")
            check(
                x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0,
                "causal_conv1d with channel last layout requires strides (x.stride(0) and x.stride(2)) "
                "to be multiples of 8",
            )
        check(2 <= width <= 4, "causal_conv1d only supports width between 2 and 4")
        if bias_ is not None:
            check(bias_.dtype == weight.dtype, f"bias's dtype {bias_.dtype} == weight's {weight.dtype}")
            check(bias_.stride(-1) == 1, "bias.stride(-1) == 1")
            check_shape(bias_, dim, name="bias")
        return channel_last

    def not_emulated(**given):
        named = [k for k, v in given.items() if v is not None]
        check(not named, f"{', '.join(named)}: not emulated (seqarena passes none)")

    def conv(x, weight, bias, silu_activation):
        return causal_conv1d_ref(x, weight, bias, activation="silu" if silu_activation else None)

    def causal_conv1d_fwd(
        x, weight, bias_, seq_idx_, initial_states_, out, final_states_out_, silu_activation
    ):
        check_inputs(x, weight, bias_)
        not_emulated(seq_idx=seq_idx_, initial_states=initial_states_, final_states_out=final_states_out_)
        out.copy_(conv(x, weight, bias_, silu_activation))

    def causal_conv1d_bwd(
        x,
        weight,
        bias_,
        dout,
        seq_idx_,
        initial_states_,
        dfinal_states_,
        dx,
        dweight,
        dbias_,
        dinitial_states_,
        silu_activation,
    ):
        check_inputs(x, weight, bias_)
        check((bias_ is None) == (dbias_ is None), "bias_.has_value() == dbias_.has_value()")
        check(dx.dtype == x.dtype, f"dx's dtype {dx.dtype} == x's {x.dtype}")
        not_emulated(seq_idx=seq_idx_, initial_states=initial_states_, dfinal_states=dfinal_states_)
        g = _grads(
            lambda x, weight, bias: conv(x, weight, bias, silu_activation),
            dict(x=x, weight=weight, bias=bias_),
            dout,
        )
        dx.copy_(g["x"])
        dweight.copy_(g["weight"])
        if dbias_ is not None:
            dbias_.copy_(g["bias"])

    def causal_conv1d_update(
        x, conv_state, weight, bias_, out, silu_activation, cache_seqlens_, conv_state_indices_
    ):
        check(x.dtype in INPUT_DTYPES, f"x's dtype {x.dtype}")
        check(weight.dtype in INPUT_DTYPES, f"weight's dtype {weight.dtype}")
        check(conv_state.dtype == x.dtype, f"conv_state's dtype {conv_state.dtype} == x's {x.dtype}")
        batch, dim, _ = x.shape
        width = weight.shape[-1]
        check(conv_state.shape[2] >= width - 1, "conv_state_len >= width - 1")
        check_shape(weight, dim, width, name="weight")
        check(2 <= width <= 4, "causal_conv1d only supports width between 2 and 4")
        check_shape(conv_state, batch, dim, conv_state.shape[2], name="conv_state")
        if bias_ is not None:
            check(bias_.dtype == weight.dtype, f"bias's dtype {bias_.dtype} == weight's {weight.dtype}")
            check_shape(bias_, dim, name="bias")
        not_emulated(cache_seqlens=cache_seqlens_, conv_state_indices=conv_state_indices_)
        activation = "silu" if silu_activation else None
        out.copy_(causal_conv1d_update_ref(x, conv_state, weight, bias_, activation))

    _fill(
        module,
        causal_conv1d_fwd=causal_conv1d_fwd,
        causal_conv1d_bwd=causal_conv1d_bwd,
        causal_conv1d_update=causal_conv1d_update,
    )


def tilelang_modules() -> dict[str, types.ModuleType]:
    """The TileLang kernel modules of mamba_ssm's MIMO wrapper, standing in (the module docstring)."""
    reference = load_fixture("mamba3_mimo_reference").mamba3_MIMO_chunk_ref

    def chunk_sums(adt, chunk_size):
        """dA_cs and dA_cs_rev of adt (batch, nheads, L), as mamba_ssm's compute_dacs_segsum_triton:
        the inclusive and the exclusive reverse sums within each chunk."""
        length = adt.shape[-1]
        inclusive = F.pad(adt, (0, -length % chunk_size)).unflatten(-1, (-1, chunk_size)).cumsum(-1)
        reverse = inclusive[..., -1:] - inclusive
        return inclusive.flatten(-2)[..., :length], reverse.flatten(-2)[..., :length]

    def adt_of(dA_cs, chunk_size):
        """adt from its within-chunk sums."""
        length = dA_cs.shape[-1]
        sums = F.pad(dA_cs, (0, -length % chunk_size)).unflatten(-1, (-1, chunk_size))
        return (sums - F.pad(sums[..., :-1], (1, 0))).flatten(-2)[..., :length]

    def on_reference(q, k, v, adt, dt, trap, q_bias, k_bias, mimo_v, mimo_z, mimo_o, angles, D, z, **options):
        """The reference, its sequence led by steps that change nothing (zero inputs, dt and adt), so
        that its last step ends a chunk: the reference pads a ragged last chunk after it, which
        would count in its final state; the kernel ends at the last step. The kernel reads Z only
        where it contracts with mimo_o."""
        chunk_size, length = options["chunk_size"], v.shape[1]
        lead = -length % chunk_size

        def led(t, dim):
            return torch.cat([t.new_zeros(*t.shape[:dim], lead, *t.shape[dim + 1 :]), t], dim)

        dA_cs, dA_cs_rev = chunk_sums(led(adt, 2), chunk_size)
        contract = mimo_o is not None
        out, final_state, final_k = reference(
            led(q, 1),
            led(k, 1),
            led(v, 1),
            q_bias,
            k_bias,
            mimo_v,
            mimo_o,
            led(z, 1) if contract and z is not None else None,
            mimo_z if contract else None,
            led(angles, 1),
            dA_cs,
            dA_cs_rev,
            led(dt, 2),
            led(trap, 2),
            D,
            contract_mimo_out=contract,
            **options,
        )
        return out[:, lead:], final_state, final_k

    def mamba_mimo_forward(
        q,
        k,
        v,
        q_bias,
        k_bias,
        mimo_v,
        mimo_o,
        z,
        D,
        mimo_z,
        angles,
        dA_cs,
        dA_cs_rev,
        dt,
        trap,
        segsum,
        chunk_size,
        rotary_dim_divisor,
        dtype,
        return_state=False,
        threads=128,
        num_stages=0,
    ):
        given = dict(q=q, k=k, v=v, z=z, trap=trap, q_bias=q_bias, k_bias=k_bias, mimo_v=mimo_v)
        given |= dict(mimo_o=mimo_o, mimo_z=mimo_z, D=D, angles=angles, dA_cs=dA_cs, dt=dt)
        for name, t in [(name, t) for name, t in given.items() if t is not None]:
            declared = dtype if name in ("q", "k", "v", "z", "trap") else torch.float32  # its T.Tensor's
            check(t.dtype == declared, f"{name} is {t.dtype}, the kernel declares {declared}")
        out, final_state, final_k = on_reference(
            q,
            k,
            v,
            adt_of(dA_cs, chunk_size),
            dt,
            trap,
            q_bias,
            k_bias,
            mimo_v,
            mimo_z,
            mimo_o,
            angles,
            D,
            z,
            chunk_size=chunk_size,
            rotary_dim_divisor=rotary_dim_divisor,
            dtype=dtype,
            return_final_state=return_state,
        )
        return out.to(dtype), final_state, None if final_k is None else final_k.to(dtype)

    def mamba_mimo_bwd_combined(
        dout,
        q,
        k,
        v,
        q_bias,
        k_bias,
        mimo_v,
        mimo_o,
        z,
        mimo_z,
        angles,
        dA_cs,
        dA_cs_rev,
        dt,
        trap,
        D,
        segsum,
        chunk_size,
        rotary_dim_divisor,
        dtype,
        bf_threads=128,
        bf_num_stages=0,
        bb_threads=256,
        bb_num_stages=0,
    ):
        """The gradients in the wrapper's order, dADT through the chunk sums dA_cs and dA_cs_rev."""
        inputs = dict(
            q=q,
            k=k,
            v=v,
            adt=adt_of(dA_cs, chunk_size),
            dt=dt,
            trap=trap,
            q_bias=q_bias,
            k_bias=k_bias,
            mimo_v=mimo_v,
            mimo_z=mimo_z,
            mimo_o=mimo_o,
            angles=angles,
            D=D,
            z=z,
        )

        def out(**given):
            options = dict(chunk_size=chunk_size, rotary_dim_divisor=rotary_dim_divisor, dtype=dtype)
            return on_reference(**given, **options)[0].to(dtype)

        grads = _grads(out, inputs, dout)
        return tuple(None if inputs[name] is None else grads[name] for name in inputs)

    def not_emulated(*args, **kwargs):
        raise NotImplementedError(
            "mamba_ssm's varlen MIMO kernels are not emulated: seqarena passes no cu_seqlens"
        )

    functions = {
        "mamba_mimo_forward": mamba_mimo_forward,
        "mamba_mimo_bwd_combined": mamba_mimo_bwd_combined,
        "mamba_mimo_forward_varlen": not_emulated,
        "mamba_mimo_bwd_combined_varlen": not_emulated,
    }
    modules = {}
    for (name, function), arguments in TILELANG_KERNELS.items():
        fn = functions[function]
        if arguments is not None:
            assert list(inspect.signature(fn).parameters) == arguments.split(), (name, function)
        modules[f"{TILELANG}.{name}"] = module = types.ModuleType(f"{TILELANG}.{name}")
        setattr(module, function, fn)
    return modules


def _fill(module: types.ModuleType, **functions) -> None:
    for key, fn in functions.items():
        params = list(inspect.signature(fn).parameters)
        assert params == BINDINGS[module.__name__, key].split(), (module.__name__, key, params)
        setattr(module, key, fn)


@contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _first_config_only(run):
    def run_first(self, *args, **kwargs):
        self.configs = self.configs[:1]  # one config: no timing, which needs a GPU
        return run(self, *args, **kwargs)

    return run_first


def _index_by_item(patch_lang_tensor):
    def patch(tensor, scope):
        patch_lang_tensor(tensor, scope)
        # numpy >= 2.4 refuses int() of a one-element array, which the interpreter's scalars are
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    return patch


PTX_APPROXIMATIONS = {"cos.approx.f32": np.cos, "sin.approx.f32": np.sin, "tanh.approx.f32": np.tanh}


def _inline_asm_as_numpy(builder, asm, constraints, values, types_, is_pure, pack):
    """The interpreter's inline assembly: the PTX approximations Mamba-3's kernels use, as numpy's."""
    (function,) = [f for name, f in PTX_APPROXIMATIONS.items() if asm.startswith(name)] or [None]
    if function is None or len(values) != 1:
        raise NotImplementedError(f"no stand-in for inline assembly {asm!r}")
    handle = type(values[0])  # the interpreter's TensorHandle
    result = handle(function(values[0].data).astype(np.float32), values[0].dtype.scalar)
    return types.SimpleNamespace(get_result=lambda index: result)


class _TorchWithFloat32ForBfloat16(types.ModuleType):
    """torch, but its bfloat16 is float32 (for modules whose casts to bfloat16 the interpreter would
    compute wrongly)."""

    def __getattr__(self, name):
        return torch.float32 if name == "bfloat16" else getattr(torch, name)


def _saying_cuda(fn):
    """fn, its tensors saying they are on CUDA while it runs (for a Python check of is_cuda)."""

    def run(*args, **kwargs):
        saved = torch.Tensor.is_cuda
        torch.Tensor.is_cuda = property(lambda self: True)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.is_cuda = saved

    return run


SISO_BACKWARD = ("compute_dzdo", "compute_dqkv", "compute_dqktheta", "compute_ddt_dtrap_dinput_states")


def _cpu_autocast_for_cuda(is_autocast_enabled):
    def enabled(device_type=None):
        return is_autocast_enabled(device_type or "cpu")

    return enabled


@contextmanager
def cuda_backend_on_cpu(triton_kernels: str = "interpreted"):
    """seqarena's cuda backend, running mamba_ssm's and causal_conv1d's code on CPU tensors, its
    Triton kernels ``"interpreted"`` (they run; the module's docstring), or ``"compiled for sm_90"``
    (they compile and never run: see ``_compiled_for_sm90``)."""
    from seqarena.ops import backends, cuda

    kernels = {"interpreted": _interpreted_kernels, "compiled for sm_90": _compiled_for_sm90}[triton_kernels]
    with oracle_on_path(("mamba_ssm", "causal_conv1d", "triton"), FORGOTTEN), kernels():
        saved_backend = backends._BACKENDS["cuda"]
        try:
            cuda.kernels.cache_clear()
            reason = cuda.kernels().reason
            assert reason is None, reason
            backends._BACKENDS["cuda"] = dataclasses.replace(saved_backend, why_not=lambda u: None)
            yield
        finally:
            backends._BACKENDS["cuda"] = saved_backend
            cuda.kernels.cache_clear()


@contextmanager
def _interpreted_kernels():
    """The stand-in extensions, and Triton's interpreter with its shims (the module's docstring)."""
    with _triton_imported_afresh(interpret=True), _stand_in_extensions(FOUR_MULTIPROCESSORS):
        import triton.runtime.autotuner as autotuner
        import triton.runtime.interpreter as interpreter
        from mamba_ssm.ops.triton.mamba3 import mamba3_siso_combined, mamba3_siso_fwd

        # Triton checks integer overflow only in debug mode (off here, as on a GPU by default): a
        # compiled kernel drops the check's int64 arithmetic, which the interpreter would compute
        # eagerly, then throw away (over half of its time in the SSD's kernels)
        unchecked = dataclasses.replace(interpreter.interpreter_builder.options, sanitize_overflow=False)
        with (
            patched(autotuner.Autotuner, "run", _first_config_only(autotuner.Autotuner.run)),
            patched(interpreter, "_patch_lang_tensor", _index_by_item(interpreter._patch_lang_tensor)),
            patched(interpreter.InterpreterBuilder, "create_inline_asm", _inline_asm_as_numpy),
            patched(interpreter.interpreter_builder, "options", unchecked),
            patched(mamba3_siso_combined, "torch", _TorchWithFloat32ForBfloat16("torch")),
            patched(mamba3_siso_fwd, "torch", _TorchWithFloat32ForBfloat16("torch")),
        ):
            yield


@contextmanager
def _compiled_for_sm90():
    """The stand-in extensions, and Triton compiling for an H100 (sm_90), here, with its own
    compiler and the ptxas it ships: a launch compiles its kernel for that GPU, then fails, since
    nothing runs without one; ``seqarena.ops.triton_compile.compile_ahead`` only compiles."""
    with _triton_imported_afresh(interpret=False), _stand_in_extensions(H100):
        from triton.runtime.driver import driver

        with patched(driver, "_active", _Sm90Driver()):  # what driver.set_active sets
            yield


@contextmanager
def _triton_imported_afresh(interpret: bool):
    """Triton's Python imported afresh, interpreting kernels or compiling them (TRITON_INTERPRET,
    read when a kernel is decorated and when it runs); on exit the modules and the variable from
    before come back. Triton decides at import whether its own jit functions (tl.cdiv and the
    like) are interpreted, and its interpreter leaves triton.language patched once a kernel has
    called one (triton 3.6's InterpretedFunction.__call__ patches and never restores): so neither
    mode runs on modules that the other, or an earlier plain import, has made. Triton's library,
    which cannot load twice, is kept."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    before = {name: sys.modules.pop(name) for name in _triton_python_modules()}
    try:
        yield
    finally:
        for name in _triton_python_modules():
            del sys.modules[name]
        sys.modules.update(before)
        os.environ.pop("TRITON_INTERPRET", None)
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def _triton_python_modules() -> list[str]:
    return [m for m in sys.modules if m.split(".")[0] == "triton" and not m.startswith("triton._C")]


class _Sm90Driver:
    """Triton's driver for a machine that compiles for sm_90 and has no GPU (stream and device 0)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):  # the autotuner's timing: it launches
        return lambda kernel_call, quantiles, **options: kernel_call()

    def launcher_cls(self, src, metadata):
        """A launch's first step; the launcher is never called: loading the kernel fails first."""

    @property
    def utils(self):
        return _Sm90Utils()

    def __getattr__(self, name):
        raise RuntimeError(f"a Triton kernel was launched (driver.{name}): compiled for sm_90, nothing runs")


class _Sm90Utils:
    """What a launch loads a kernel with: an H100's shared memory per block (H100_SHARED_MEMORY), which
    Triton checks the kernel's need against first (OutOfResources, as on the GPU); then loading the
    kernel fails, since nothing runs."""

    def get_device_properties(self, device):
        return {"max_shared_mem": H100_SHARED_MEMORY}

    def load_binary(self, name, kernel, shared, device):
        raise RuntimeError(
            "a Triton kernel was launched (driver.utils.load_binary): compiled for sm_90, nothing runs"
        )


@contextmanager
def launches_doing_nothing():
    """In the compiled-for-sm_90 mode: a launch that passes Triton's checks of the GPU's resources
    returns without running, so that a workload runs through as on a GPU, but for its values (its
    outputs hold whatever memory held)."""
    loaded = None, None, 0, 0, 1024  # module, function, registers, spills, an H100's threads a block
    with (
        patched(_Sm90Utils, "load_binary", lambda self, *args: loaded),
        patched(_Sm90Driver, "launcher_cls", lambda self, src, metadata: lambda *args: None),
    ):
        yield


@contextmanager
def _stand_in_extensions(properties: types.SimpleNamespace):
    """The stand-in extensions in sys.modules while the packages' modules import and run, and the
    shims of CUDA that their Python asks for (the module's docstring); ``properties`` are the GPU's
    that ``torch.cuda.get_device_properties`` reports."""
    # the packages import the extensions first; the stand-ins are filled in once their
    # references (which live in those packages) have imported
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules.update(tilelang_modules())
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref, causal_conv1d_update_ref
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    from mamba_ssm.ops.triton.mamba3 import mamba3_siso_combined

    fill_causal_conv1d(sys.modules["causal_conv1d_cuda"], causal_conv1d_ref, causal_conv1d_update_ref)
    fill_selective_scan(sys.modules["selective_scan_cuda"], selective_scan_ref)
    with (
        patched(torch.cuda, "device", lambda index: nullcontext()),
        patched(torch.cuda, "get_device_properties", lambda device=None: properties),
        patched(torch, "is_autocast_enabled", _cpu_autocast_for_cuda(torch.is_autocast_enabled)),
        patched(torch, "get_autocast_gpu_dtype", lambda: torch.get_autocast_dtype("cpu")),
        ExitStack() as backward,
    ):
        for name in SISO_BACKWARD:  # as mamba3_siso_combined imported them
            original = getattr(mamba3_siso_combined, name)
            backward.enter_context(patched(mamba3_siso_combined, name, _saying_cuda(original)))
        yield


class Compiles:
    """Within it: each kernel that Triton compiles for the GPU (``kernels``: once per config and
    specialization found in no cache, when ptxas runs), those of them that need more shared memory
    than an H100 has (``past_h100``: refused at their launch) and the threads it compiled on; and
    each launch that found its JIT cache without the kernel (``missed``: a compile begun, or joined
    when one is under way)."""

    def __init__(self):
        self.kernels, self.past_h100, self.threads, self.missed = [], [], set(), []
        self._patches = ExitStack()

    def __enter__(self):
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend

        make_cubin = CUDABackend.make_cubin

        def compiling(backend, src, metadata, *args):
            self.kernels.append(metadata["name"])
            if metadata["shared"] > H100_SHARED_MEMORY:  # Triton's own count, made before ptxas runs
                self.past_h100.append(metadata["name"])
            self.threads.add(threading.get_ident())
            return make_cubin(backend, src, metadata, *args)

        def missed(**info):
            self.missed.append(info["fn"].name)
            return False  # go on and compile

        self._patches.enter_context(patched(CUDABackend, "make_cubin", compiling))
        self._patches.enter_context(patched(knobs.runtime, "jit_cache_hook", missed))
        return self

    def __exit__(self, *exc):
        self._patches.close()


@contextmanager
def tuned_without_a_gpu():
    """Triton's autotuners choose a config as on a GPU, filing it under their own key, but nothing
    runs: each config times faster than the one before it (the last one is chosen), and the chosen
    launch compiles, then does nothing (compiled for sm_90: ``launches_doing_nothing``)."""
    from triton.runtime.autotuner import Autotuner

    def later_is_faster(self, *args, config, **kwargs):
        return [-float(self.configs.index(config))] * 3  # median, 20th and 80th percentiles

    with patched(Autotuner, "_bench", later_is_faster), launches_doing_nothing():
        yield
