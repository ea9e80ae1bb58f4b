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
