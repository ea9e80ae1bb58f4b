"""The env stage: kernels.json, the backends' numeric self-check, the CUDA build's arch restriction."""

import json

import pytest
import torch

from seqarena.env import self_check, write_kernels_record
from seqarena.ops import backends, selective_scan_torch
from seqarena.ops.backends import KernelBackend
from seqarena.ops.cuda_build import restrict_archs


def test_kernels_record_names_every_backend_and_creates_the_store(tmp_path):
    out = tmp_path / "results/env/kernels.json"
    uri = f"sqlite:///{tmp_path / 'results/mlflow.db'}"
    write_kernels_record(out, uri)
    record = json.loads(out.read_text())
    assert record["torch"] == torch.__version__ and record["tracking_uri"] == uri
    assert set(record["backends"]) == set(backends.backend_names())
    for name, entry in record["backends"].items():
        if entry["available"]:
            assert entry["passed"] and entry["max_relative_error"] < 1e-3, name
        else:
            assert entry["reason"], name
    assert record["backends"]["torch"]["available"]
    assert (tmp_path / "results/mlflow.db").stat().st_size > 0  # created before any parallel job


def test_self_check_catches_a_backend_that_is_slightly_wrong(monkeypatch):
    def off_by_a_little(*args, **kwargs):
        return selective_scan_torch(*args, **kwargs) * 1.01

    ref = backends._BACKENDS["torch"]
    broken = KernelBackend("broken", off_by_a_little, ref.step, ref.conv, ref.conv_step, -1, lambda u: None)
    monkeypatch.setitem(backends._BACKENDS, "broken", broken)  # registered for this test only
    bad = self_check("broken", torch.device("cpu"))
    assert not bad["passed"] and bad["errors"]["scan"] == pytest.approx(0.01, rel=0.05)
    assert self_check("torch", torch.device("cpu"))["passed"]


SETUP_PY = """
if not SKIP_CUDA_BUILD:
    cc_flag = []
    if not torch.version.hip:
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_70,code=sm_70")
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_80,code=sm_80")
        if bare_metal_version >= Version("11.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_90,code=sm_90")
    cc_flag.append("-DBUILD_PYTHON_PACKAGE")
"""


def test_cuda_build_is_restricted_to_the_configured_archs():
    patched = restrict_archs(SETUP_PY, ["86", "90a"])
    scope = {"SKIP_CUDA_BUILD": False, "torch": torch, "bare_metal_version": 12, "Version": lambda v: 11}
    exec(compile(patched, "setup.py", "exec"), scope)  # still valid Python, blocks intact
    assert scope["cc_flag"] == [
        "-gencode", "arch=compute_86,code=sm_86", "-gencode", "arch=compute_90a,code=sm_90a",
        "-DBUILD_PYTHON_PACKAGE",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="layout changed"):
        restrict_archs("cc_flag = ['-O3']\n", ["80"])
    with pytest.raises(ValueError, match="look like 80"):
        restrict_archs(SETUP_PY, ["sm_80"])
