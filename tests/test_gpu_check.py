"""`make gpu-check` in its CPU mode: the GPU parts skipped, saying so; every other part measured."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the full check: `make gpu-check`")
def test_make_gpu_check_on_a_cpu_skips_the_gpu_parts_saying_why_and_measures_the_rest(tmp_path):
    if Path(sys.prefix) != REPO / ".venv":
        pytest.skip(f"`make gpu-check` runs in the venv that `make install` builds ({REPO / '.venv'})")
    done = subprocess.run(
        ["make", "-C", str(REPO), "gpu-check", f"GPU_CHECK_OUT={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    rows = {r["check"]: r for r in json.loads((tmp_path / "gpu-check.json").read_text())}
    table = (tmp_path / "gpu-check.md").read_text()
    assert table.splitlines()[0].startswith("Device: CPU") and "GPU parts skipped" in table

    no_cuda = "no CUDA device (torch.cuda.is_available() is False)"
    assert rows["build kernels"] == {
        "check": "build kernels",
        "status": "skipped",
        "result": no_cuda,
        "seconds": None,
    }
    assert rows["families on cuda vs torch"]["status"] == "skipped"
    assert rows["families on cuda vs torch"]["result"].startswith("no CUDA device")
    for dtype in ("float32", "bfloat16"):
        assert rows[f"backend cuda {dtype} vs float64 reference"]["status"] == "skipped"
        for backend in ("cpp", "torch"):
            row = rows[f"backend {backend} {dtype} vs float64 reference"]
            error, worst, limits = re.search(
                r"error (\S+) \((\w+); tolerances (.*?)\)", row["result"]
            ).groups()
            tolerances = {op: float(limit) for op, limit in (item.split() for item in limits.split(", "))}
            assert row["status"] == "passed" and 0 < float(error) <= tolerances[worst.split("_")[0]], row

    trained = [r for name, r in rows.items() if name.startswith("train step")]
    assert [r["check"].split()[2] for r in trained] == ["mamba-tiny", "transformer-tiny"]
    for row in trained:
        assert float(re.match(r"([\d,]+) tokens/s", row["result"])[1].replace(",", "")) > 0, row
    kernels = [r for name, r in rows.items() if name.startswith("kernels")]
    assert len(kernels) == 4
    for row in kernels:
        for said in ("scan cpp", "scan pytorch-parallel", "conv fft", "ssd cpp", "attention (SDPA)"):
            assert said in row["result"], row
    generation = [r for name, r in rows.items() if name.startswith("generation batch")]
    assert [r["check"].split()[2] for r in generation] == ["1", "4"]  # a row as each batch size ends
    assert all(re.search(r"Mamba \d+\.\d+x$", r["result"]) and r["seconds"] > 0 for r in generation)
    assert all(f"| {name} |" in table for name in rows)


def test_a_gpu_check_cut_short_leaves_every_row_it_measured(tmp_path):
    """A lease's time limit kills the check mid-section: the kernel rows of the lengths it
    finished are in the table, not lost with the lengths it did not reach."""
    check = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--only", "kernels", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        said = check.stdout.readline()
        assert said.startswith("gpu-check: measured: kernels fwd L 256"), said
    finally:
        check.terminate()
        check.communicate(timeout=60)
    assert check.returncode == -15  # killed, as `timeout` kills it
    rows = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rows[0]["check"].startswith("kernels fwd L 256") and rows[0]["status"] == "measured"
    assert "attention (SDPA)" in rows[0]["result"] and rows[0]["seconds"] > 0
    assert all(" L 256 " in r["check"] for r in rows[:2]) and len(rows) < 4


def test_a_section_that_breaks_keeps_the_rows_before_it_and_names_the_error(tmp_path):
    gpu_check = load_benchmark("gpu_check")

    def rows():
        yield gpu_check.Row("kernels fwd L 512", "measured", "scan cuda 0.1 ms")
        raise torch.OutOfMemoryError("CUDA out of memory at L 1024")

    log = tmp_path / "errors.log"
    got = list(gpu_check.guarded("kernels", rows, log))
    assert got == [
        gpu_check.Row("kernels fwd L 512", "measured", "scan cuda 0.1 ms"),
        gpu_check.Row("kernels", "failed", "OutOfMemoryError: CUDA out of memory at L 1024 (errors.log)"),
    ]
    assert "--- kernels\nTraceback" in log.read_text() and "in rows" in log.read_text()
