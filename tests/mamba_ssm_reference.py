"""mamba_ssm 2.3's own model code on a CPU: the independent oracle for every Mamba family.

`make oracle` puts mamba_ssm's Python sources, with the triton and einops they import, in
$SEQARENA_MAMBA_SSM_REFERENCE (beside the venv, never in it). On a CPU its modules import
once an empty ``selective_scan_cuda`` stands in for its CUDA extension; its GPU kernels are
then swapped for its own pure-PyTorch references (``selective_scan_ref``,
``ssd_chunk_scan_combined_ref``, both ``rms_norm_ref``), so its ``MambaLMHeadModel`` runs a
forward end to end. mamba_ssm is imported inside ``mamba_ssm_on_cpu`` and forgotten after.
"""

import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.nn.functional as F

from conftest import load_module

ENV_VAR = "SEQARENA_MAMBA_SSM_REFERENCE"
DEFAULT = Path(__file__).resolve().parents[1] / ".venv" / "mamba-ssm-reference"
# Forgotten after each use, so seqarena never finds a mamba_ssm without its kernels; triton stays
# imported (its native module cannot be imported twice in one process).
FORGOTTEN = {"mamba_ssm", "selective_scan_cuda"}


def _patch_kernels_with_references():
    from mamba_ssm.modules import mamba2, mamba_simple
    from mamba_ssm.ops import selective_scan_interface
    from mamba_ssm.ops.triton import layer_norm, layernorm_gated, ssd_combined

    mamba_simple.selective_scan_fn = selective_scan_interface.selective_scan_ref

    def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, **rest):
        assert not any(rest.values()) or rest.get("dt_limit") == (0.0, float("inf")), rest
        return ssd_combined.ssd_chunk_scan_combined_ref(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus
        )

    mamba2.mamba_chunk_scan_combined = chunk_scan

    def gated_norm(self, x, z=None):
        return layernorm_gated.rms_norm_ref(
            x, self.weight, self.bias, z, self.eps, self.group_size, self.norm_before_gate
        )

    layernorm_gated.RMSNorm.forward = gated_norm
    layer_norm.RMSNorm.forward = lambda self, x: layer_norm.rms_norm_ref(
        x, self.weight, self.bias, eps=self.eps
    )


@contextmanager
def oracle_on_path(packages: tuple[str, ...], forgotten: set[str]):
    """The oracle's folder first on sys.path, yielded; it must hold ``packages`` (else the test fails,
    naming what is missing). On exit the folder leaves sys.path and the ``forgotten`` top-level
    modules leave sys.modules, so seqarena never finds them later."""
    root = Path(os.environ.get(ENV_VAR) or DEFAULT)
    for package in packages:
        if not (root / package).is_dir():
            pytest.fail(f"{package}'s sources (the tests' oracle) are not in {root}: run `make oracle`")
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in forgotten]:
            del sys.modules[name]


@contextmanager
def mamba_ssm_on_cpu():
    """Yields mamba_ssm's MambaConfig, MambaLMHeadModel and its SSD references, runnable here."""
    with oracle_on_path(("mamba_ssm",), FORGOTTEN):
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        from mamba_ssm.ops.triton.ssd_combined import ssd_chunk_scan_combined_ref

        _patch_kernels_with_references()
        yield SimpleNamespace(
            MambaConfig=MambaConfig,
            MambaLMHeadModel=MambaLMHeadModel,
            ssd_minimal_discrete=ssd_minimal_discrete,
            ssd_chunk_scan_combined_ref=ssd_chunk_scan_combined_ref,
        )


def reference_config(ours: dict, mamba_ssm) -> object:
    """mamba_ssm's MambaConfig for our config.json, on its CPU-runnable paths: no fused add+norm
    (a Triton kernel) and, for Mamba-2, the unfused path (conv, then the chunk scan)."""
    data = dict(ours, fused_add_norm=False)
    if data.get("ssm_cfg", {}).get("layer") == "Mamba2":
        data["ssm_cfg"] = dict(data["ssm_cfg"], use_mem_eff_path=False)
    return mamba_ssm.MambaConfig(**data)


MAMBA3_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mamba3"


def load_fixture(name: str, module_name: str | None = None) -> types.ModuleType:
    """A vendored file of tests/fixtures/mamba3 (its README says whence), imported as a module."""
    return load_module(MAMBA3_FIXTURES / f"{name}.py", module_name)


def _siso_kernel(reference):
    """mamba3_siso_combined's signature, computed by mamba_ssm's test reference."""

    def mamba3_siso_combined(
        Q,
        K,
        V,
        ADT,
        DT,
        Trap,
        Q_bias,
        K_bias,
        Angles,
        D=None,
        Z=None,
        Input_States=None,
        chunk_size=64,
        return_final_states=False,
        cu_seqlens=None,
    ):
        assert cu_seqlens is None
        out, states = reference(
            Q,
            K,
            V,
            ADT,
            DT,
            Trap,
            Q_bias,
            K_bias,
            Angles,
            D,
            Z,
            Initial_States=Input_States,
            chunk_size=chunk_size,
            dtype=V.dtype,
        )
        return (out, *states) if return_final_states else out

    return mamba3_siso_combined


def _mimo_kernel(references):
    """mamba3_mimo's signature (TileLang), computed by mamba_ssm's chunked MIMO test reference, which
    takes the cumulative angles and the within-chunk cumulative decays that the kernel computes."""

    def mamba3_mimo(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, MIMO_V, MIMO_Z, MIMO_Out, Angles, D, Z, **rest):
        chunk_size, rotary_dim_divisor, dtype = rest["chunk_size"], rest["rotary_dim_divisor"], rest["dtype"]
        assert not (rest.get("return_state") or rest.get("fuse_pregate_headwise_rms_norm"))
        assert rest.get("cu_seqlens") is None
        length = ADT.shape[-1]
        decay = F.pad(ADT, (0, -length % chunk_size)).unflatten(-1, (-1, chunk_size)).cumsum(-1)
        decay_rev = decay[..., -1:] - decay
        out, _, _ = references.mamba3_MIMO_chunk_ref(
            Q,
            K,
            V,
            Q_bias,
            K_bias,
            MIMO_V,
            MIMO_Out,
            Z,
            MIMO_Z if Z is not None else None,
            references.apply_angle_dt_reference(Angles, DT.transpose(1, 2)),
            decay.flatten(-2)[..., :length],
            decay_rev.flatten(-2)[..., :length],
            DT,
            Trap,
            D,
            chunk_size=chunk_size,
            rotary_dim_divisor=rotary_dim_divisor,
            dtype=dtype,
            contract_mimo_out=MIMO_Out is not None,
        )
        return out

    return mamba3_mimo


@contextmanager
def mamba3_on_cpu():
    """mamba_ssm's Mamba-3, runnable here: its 2.3.2.post1 module (A through softplus) and its main
    branch's (A through the heavy-tail activation), their SISO (Triton) and MIMO (TileLang) kernels
    swapped for mamba_ssm's own test references, and its MambaLMHeadModel building main's Mamba3
    for ``ssm_cfg.layer: Mamba3`` (2.3.2's create_block knows Mamba1 and Mamba2 only; main's
    ``ssm_layer_map`` adds Mamba3, #968). Yields them with the references."""
    with mamba_ssm_on_cpu() as mamba_ssm:
        from mamba_ssm.models import mixer_seq_simple
        from mamba_ssm.modules import mamba3 as release

        siso = load_fixture("mamba3_siso_reference")
        mimo = load_fixture("mamba3_mimo_reference")
        main = load_fixture("mamba3_module_main", "mamba_ssm.modules.mamba3_main")
        for module in (release, main):
            module.mamba3_siso_combined = _siso_kernel(siso.mamba3_siso_fwd_ref)
            module.mamba3_mimo_combined = _mimo_kernel(mimo)
        create_block = mixer_seq_simple.create_block

        def create_block_with_mamba3(*args, ssm_cfg=None, **kwargs):
            if (ssm_cfg or {}).get("layer") != "Mamba3":
                return create_block(*args, ssm_cfg=ssm_cfg, **kwargs)
            mixer_seq_simple.Mamba, mamba1 = main.Mamba3, mixer_seq_simple.Mamba
            try:
                return create_block(*args, ssm_cfg={**ssm_cfg, "layer": "Mamba1"}, **kwargs)
            finally:
                mixer_seq_simple.Mamba = mamba1

        mixer_seq_simple.create_block = create_block_with_mamba3
        yield SimpleNamespace(
            Mamba3=release.Mamba3,
            Mamba3Main=main.Mamba3,
            siso=siso,
            mimo=mimo,
            MambaConfig=mamba_ssm.MambaConfig,
            MambaLMHeadModel=mamba_ssm.MambaLMHeadModel,
        )
