"""The env stage: kernels.json, the backends' numeric self-check, the CUDA build's arch restriction."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from seqarena.env import self_check, write_kernels_record
from seqarena.ops import backends, mamba3_chunk_scan_torch, selective_scan_torch
from seqarena.ops.cuda_build import (
    check_toolchain,
    nvcc_version,
    raise_cxx_standard,
    restrict_archs,
    split_instantiations,
    split_sources,
)
from seqarena.ops.ssd import ssd_chunk_scan_torch


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
    broken = dataclasses.replace(ref, name="broken", scan=off_by_a_little, priority=-1)
    monkeypatch.setitem(backends._BACKENDS, "broken", broken)  # registered for this test only
    bad = self_check("broken", torch.device("cpu"))
    assert not bad["passed"] and bad["errors"]["scan"] == pytest.approx(0.01, rel=0.05)
    assert self_check("torch", torch.device("cpu"))["passed"]


def test_the_cuda_backends_float32_ssd_is_held_to_tf32s_tolerance_and_nothing_else_is(monkeypatch):
    """mamba_ssm's Triton SSD multiplies float32 in TF32: an error of 5e-3 there passes; the same in
    its scan or in bfloat16's checks of others is judged as before."""

    def tf32_like(*args, **kwargs):
        return ssd_chunk_scan_torch(*args, **kwargs) * 1.005

    ref = backends._BACKENDS["torch"]
    as_cuda = dataclasses.replace(ref, name="cuda", ssd=tf32_like)
    monkeypatch.setitem(backends._BACKENDS, "cuda", as_cuda)
    check = self_check("cuda", torch.device("cpu"))
    assert check["errors"]["ssd"] == pytest.approx(0.005, rel=0.05)
    assert check["passed"] and check["tolerances"] == {
        "scan": 1e-3,
        "ssd": 1e-2,
        "conv": 1e-3,
        "mamba3": 5e-2,
    }
    monkeypatch.setitem(backends._BACKENDS, "cpp", dataclasses.replace(ref, name="cpp", ssd=tf32_like))
    other = self_check("cpp", torch.device("cpu"))
    assert not other["passed"] and {name.split("_")[0] for name in other["failed"]} == {"ssd"}


FIXTURES = Path(__file__).with_name("fixtures") / "cuda_build"
GENCODE = re.compile(r"arch=compute_(\w+),code=sm_(\w+)")


@pytest.mark.parametrize("setup_py", ["mamba_ssm-2.3.2.post1.setup.py", "causal_conv1d-1.6.1.post4.setup.py"])
def test_the_real_setup_py_of_each_pinned_sdist_builds_for_the_configured_arch_only(setup_py):
    source = (FIXTURES / setup_py).read_text()
    shipped = GENCODE.findall(source)
    assert len(shipped) > 4 and ("90", "90") in shipped
    patched = restrict_archs(source, ["90"])
    compile(patched, setup_py, "exec")  # still valid Python, every block intact
    assert GENCODE.findall(patched) == [("90", "90")]
    assert patched.count('cc_flag += ["-gencode", "arch=compute_90,code=sm_90"]') == 1
    with pytest.raises(ValueError, match="look like 80"):
        restrict_archs(source, ["sm_80"])
    cxx20 = raise_cxx_standard(patched, "20")  # what torch 2.14's headers require
    assert "-std=c++17" not in cxx20 and cxx20.count("-std=c++20") == patched.count("-std=c++17")
    compile(cxx20, setup_py, "exec")


def test_the_cuda_backends_mamba3_is_held_to_bfloat16s_tolerance_and_nothing_else_is(monkeypatch):
    """mamba_ssm's Mamba-3 SISO wrapper computes in bfloat16 whatever it is given: an error of 2e-2
    there passes on cuda, and fails the same check on any other backend."""

    def bf16_like(*args, **kwargs):
        return mamba3_chunk_scan_torch(*args, **kwargs) * 1.02

    ref = backends._BACKENDS["torch"]
    monkeypatch.setitem(backends._BACKENDS, "cuda", dataclasses.replace(ref, name="cuda", mamba3=bf16_like))
    check = self_check("cuda", torch.device("cpu"))
    assert check["errors"]["mamba3"] == pytest.approx(0.02, rel=0.05)
    assert check["passed"] and check["tolerances"]["mamba3"] == 5e-2
    monkeypatch.setitem(backends._BACKENDS, "cpp", dataclasses.replace(ref, name="cpp", mamba3=bf16_like))
    other = self_check("cpp", torch.device("cpu"))
    assert not other["passed"] and {name.split("_")[0] for name in other["failed"]} == {"mamba3"}


def test_a_setup_py_without_a_gencode_list_is_refused():
    with pytest.raises(ValueError, match="layout changed"):
        restrict_archs("cc_flag = ['-O3']\n", ["80"])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH (the CUDA toolkit checks need one)")
def test_a_toolchain_mismatch_fails_before_compiling_naming_both_versions():
    release = nvcc_version()
    with pytest.raises(ValueError, match=rf"nvcc {release} cannot compile for sm_35 .*kernels.cuda_archs"):
        check_toolchain(["35", "90"], release)
    with pytest.raises(ValueError, match=rf"torch was built for CUDA 9.2 and nvcc is CUDA {release}"):
        check_toolchain(["90"], "9.2")
    with pytest.raises(ValueError, match=rf"torch is a CPU build .* nvcc is CUDA {release}"):
        check_toolchain(["90"], None)
    check_toolchain(["90a"], release)  # the same major: nothing to say


def test_a_missing_nvcc_fails_before_compiling_naming_it():
    with pytest.raises(ValueError, match="nvcc-13.9 is not on PATH: the CUDA build needs the toolkit's"):
        check_toolchain(["90"], "13.0", nvcc="nvcc-13.9")


def test_device_cuda_refuses_to_run_without_cuda_naming_the_config_key(tmp_path, monkeypatch):
    """`device: cuda` (SEQARENA_DEVICE, which the workflow exports) is a requirement: on this CPU the
    env stage fails before writing kernels.json, and so does every job's choice of device."""
    from seqarena.device import compute_device

    monkeypatch.setenv("SEQARENA_DEVICE", "cuda")
    out = tmp_path / "env" / "kernels.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqarena.cli",
            "env",
            "--out",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        done.returncode != 0 and "config device: cuda" in done.stderr and "sees no CUDA device" in done.stderr
    )
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()
    with pytest.raises(RuntimeError, match="device: cpu to run on the CPU"):
        compute_device()
    monkeypatch.setenv("SEQARENA_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")


def test_a_cu_file_of_many_instantiations_is_split_keeping_each_once():
    source = "#include <x.h>\ntemplate<typename T> void f(T t) {}\n\n" + "".join(
        f"template void f<T{i}>(T{i} t);\n" for i in range(5)
    )
    parts = split_instantiations(source, per_file=2)
    assert len(parts) == 3
    for part in parts:
        assert part.startswith("#include <x.h>\ntemplate<typename T> void f(T t) {}")
    found = [line for part in parts for line in part.splitlines() if line.startswith("template void")]
    assert found == [f"template void f<T{i}>(T{i} t);" for i in range(5)]  # each once, in order
    assert split_instantiations(source, per_file=5) == [source]


def test_the_pinned_causal_conv1d_builds_from_parts_listed_in_its_setup_py(tmp_path, cuda_sources):
    """The real tag: causal_conv1d_bwd.cu's 18 instantiations (one translation unit, 231 s on one
    core) become 9 files listed in setup.py in its place; mamba-ssm's files, one or two each, stay."""
    for name in ("causal-conv1d-1.6.1.post4", "mamba-2.3.2.post1"):
        with tarfile.open(cuda_sources / f"{name}.tar.gz") as tar:
            tar.extractall(tmp_path, filter="data")
    causal = tmp_path / "causal-conv1d-1.6.1.post4"
    setup = split_sources(causal / "setup.py")
    listed = re.findall(r'"(csrc/[\w.]+\.cu)"', setup)
    assert [p for p in listed if "bwd" in p] == [f"csrc/causal_conv1d_bwd_part{i}.cu" for i in range(9)]
    whole = (causal / "csrc/causal_conv1d_bwd.cu").read_text()
    parts = [(causal / p).read_text() for p in listed if "bwd" in p]
    assert sorted(
        line for p in parts for line in p.splitlines() if line.startswith("template void")
    ) == sorted(line for line in whole.splitlines() if line.startswith("template void"))
    mamba = tmp_path / "mamba-2.3.2.post1" / "setup.py"
    assert split_sources(mamba) == mamba.read_text()
