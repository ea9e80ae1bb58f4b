"""Benchmark stage on a CPU at tiny sizes: well-formed files, and results in the model's MLflow run."""

import csv
import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import KERNEL_ROWS
from seqarena.bench import KERNEL_COLUMNS, bench_training, cache_bytes
from seqarena.cli import main
from seqarena.models import build_model, from_pretrained


def test_kernels_csv(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "bench" / "kernels.csv"
    main(
        [
            "bench",
            "kernels",
            "--lengths",
            "256,64,128",
            "--dim",
            "64",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    with open(out) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == KERNEL_COLUMNS
        rows = list(reader)
    assert [int(r["seq_len"]) for r in rows] == sorted(int(r["seq_len"]) for r in rows)  # monotone
    combos = {(r["op"], r["backend"], r["pass"], int(r["seq_len"])) for r in rows}
    for length in (64, 128, 256):
        for op, backend in KERNEL_ROWS:
            assert {(op, backend, p, length) for p in ("fwd", "fwd+bwd")} <= combos
    assert all(float(r["median_ms"]) > 0 and r["device"] == "cpu" and r["dtype"] == "float32" for r in rows)
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("seqarena") is None  # the model runs' experiment: not a model
    (run,) = client.search_runs([client.get_experiment_by_name("seqarena-kernels").experiment_id])
    history = client.get_metric_history(run.info.run_id, "bench/kernels/scan-cpp/fwd_ms")
    assert sorted(m.step for m in history) == [64, 128, 256]


@pytest.mark.parametrize("arch", ["mamba", "hybrid", "transformer"])
def test_generation_json_from_a_checkpoint_lands_in_its_run(arch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt = tmp_path / "train" / f"{arch}-tiny"
    build_model(f"{arch}-tiny", vocab_size=64).save_pretrained(ckpt)
    out = tmp_path / "generation.json"
    main(
        [
            "bench",
            "generation",
            "--model",
            str(ckpt),
            "--prompt-len",
            "16",
            "--new-tokens",
            "8",
            "--batch-sizes",
            "1,2,4",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    result = json.loads(out.read_text())
    assert result["prompt_len"] == 16 and result["new_tokens"] == 8 and result["device"] == "cpu"
    assert result["cache_bytes_per_sequence"] == cache_bytes(from_pretrained(ckpt).allocate_cache(1, 24))
    assert [r["batch"] for r in result["results"]] == [1, 2, 4]
    for r in result["results"]:
        assert not r["oom"] and r["tokens_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 8 / (r["median_ms"] / 1e3), rel=1e-3)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seqarena").experiment_id])
    assert run.data.tags["seqarena.model_id"] == f"{arch}-tiny"
    logged = {key: value for key, value in run.data.metrics.items() if key.startswith("bench/generation/")}
    assert logged == {
        f"bench/generation/tokens_per_s/batch_{r['batch']}": r["tokens_per_s"] for r in result["results"]
    }


def test_cache_bytes_are_mambas_fixed_state_and_a_kv_cache_growing_with_length():
    """Against the caches' sizes written out: Mamba-1 keeps, per layer, d_conv inputs and a d_state
    state per inner channel (float32); a Transformer keeps a key and a value of d_model per layer
    and position."""
    mamba, transformer = build_model("mamba-tiny", 64), build_model("transformer-tiny", 64)
    mixer, c = mamba.backbone.layers[0].mixer, transformer.config
    for length in (16, 1024):
        state = mamba.config.n_layer * mixer.d_inner * (mixer.d_conv + mixer.d_state) * 4
        assert cache_bytes(mamba.allocate_cache(1, length)) == state
        assert cache_bytes(mamba.allocate_cache(3, length)) == 3 * state
        assert cache_bytes(transformer.allocate_cache(1, length)) == 2 * c.n_layer * length * c.d_model * 4


def test_training_bench_reuses_the_training_loop():
    result = bench_training(
        "transformer-tiny", steps=3, seq_len=32, micro_batch=2, vocab_size=64, warmup_steps=2
    )
    assert len(result["tokens_per_s_by_step"]) == 3  # the warm-up steps are recorded, not counted:
    assert result["tokens_per_s"] == result["tokens_per_s_by_step"][2]
    with pytest.raises(ValueError, match=r"--warmup-steps 3 \(config bench.training.warmup_steps\)"):
        bench_training("transformer-tiny", steps=3, seq_len=32, micro_batch=2, vocab_size=64, warmup_steps=3)
    assert result["tokens_per_s"] > 0 and result["flops_per_token"] > 0 and result["peak_memory_bytes"] > 0
    assert result["mfu"] is None  # no known peak for a CPU
    assert result["parameters"] == build_model("transformer-tiny", vocab_size=64).num_parameters()


def test_the_kernel_benchmark_makes_its_inputs_once_before_timing():
    """Every timed call gets the very tensors made before timing (none drawn or copied inside)."""
    from seqarena.bench import _fwd_and_fwd_bwd

    inputs = [torch.randn(2, 8, requires_grad=True), torch.randn(8, requires_grad=True)]
    seen = []

    def op(x, w):
        seen.append((id(x), id(w)))
        return x * w

    fwd, fwd_bwd = _fwd_and_fwd_bwd(inputs, op, torch.device("cpu"), repeats=3)
    assert fwd > 0 and fwd_bwd > 0 and len(seen) == 1 + 2 * (1 + 3)  # the gradient's shape, warm-ups, runs
    assert set(seen) == {(id(inputs[0]), id(inputs[1]))}
    assert inputs[0].grad is None  # gradients are returned, not accumulated into the inputs
