"""Synthetic tasks: generators checked by brute force, learning, and the recurrent evaluation path."""

import json

import pytest
import torch

from seqarena.synthetic import (
    IGNORE,
    SyntheticConfig,
    accuracy,
    build,
    induction_heads,
    mqar,
    parity,
    scored_logits,
    selective_copying,
    train_synthetic,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_selective_copying_answer_is_the_data_tokens_in_order():
    seq, labels = selective_copying(50, length=40, vocab=16, n_data=6, gen=gen())
    assert seq.shape == labels.shape == (50, 46) and int(seq.max()) <= 15
    for row, label in zip(seq.tolist(), labels.tolist(), strict=True):
        data = [t for t in row[:40] if t != 0]  # everything that is not noise, left to right
        assert data == [t for t in label if t != IGNORE] and len(data) == 6
        assert row[40:] == [15] * 6 and all(1 <= t <= 14 for t in data)
        assert label[:40] == [IGNORE] * 40


def test_induction_heads_answer_follows_the_first_special_token():
    seq, labels = induction_heads(50, length=64, vocab=16, gen=gen())
    for row, label in zip(seq.tolist(), labels.tolist(), strict=True):
        specials = [i for i, t in enumerate(row) if t == 15]
        assert len(specials) == 2 and specials[1] == 63 and specials[0] < 62
        assert label[-1] == row[specials[0] + 1] and label[:-1] == [IGNORE] * 63


def test_mqar_answer_is_the_value_paired_with_each_queried_key():
    seq, labels = mqar(30, length=64, vocab=32, n_pairs=6, gen=gen())
    for row, label in zip(seq.tolist(), labels.tolist(), strict=True):
        pairs = dict(zip(row[0:12:2], row[1:12:2], strict=True))
        assert len(pairs) == 6 and all(1 <= k < 16 <= v < 32 for k, v in pairs.items())
        queried = [(t, label[i]) for i, t in enumerate(row) if i >= 12 and t != 0]
        assert sorted(k for k, _ in queried) == sorted(pairs) and all(pairs[k] == v for k, v in queried)
        assert sum(x != IGNORE for x in label) == 6


def test_parity_labels_every_position_with_the_parity_of_the_bits_so_far():
    seq, labels = parity(20, length=50, vocab=3, gen=gen())
    for row, label in zip(seq.tolist(), labels.tolist(), strict=True):
        assert set(row) <= {1, 2}
        assert label == [1 + sum(t == 2 for t in row[: i + 1]) % 2 for i in range(50)]
    with pytest.raises(ValueError, match="parity needs vocab >= 3"):
        parity(1, 8, 2, gen())


def test_generators_reproduce_from_their_seed_and_differ_across_seeds():
    for make in (
        lambda g: selective_copying(4, 32, 16, 4, g),
        lambda g: induction_heads(4, 32, 16, g),
        lambda g: mqar(4, 32, 32, 4, g),
        lambda g: parity(4, 32, 3, g),
    ):
        a, b, c = make(gen(1)), make(gen(1)), make(gen(2))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_bad_task_settings_are_named():
    with pytest.raises(ValueError, match="unknown synthetic task 'copy'"):
        SyntheticConfig(task="copy", arch="mamba")
    with pytest.raises(ValueError, match="n_data <= length"):
        selective_copying(1, 4, 16, 8, gen())
    with pytest.raises(ValueError, match="unknown architecture 'rwkv'"):
        SyntheticConfig(task="mqar", arch="rwkv")
    # a length the task cannot be made at is named before any training, not at the evaluation after it
    with pytest.raises(ValueError, match="length 2: induction heads needs length >= 4"):
        SyntheticConfig(task="induction_heads", arch="mamba", length=32, test_lengths=[2, 64])
    with pytest.raises(ValueError, match="length 256: mqar needs n_pairs < vocab/2"):
        SyntheticConfig(task="mqar", arch="mamba", vocab=16, n_pairs=8)
    with pytest.raises(ValueError, match="min_lr_ratio in"):
        SyntheticConfig(task="mqar", arch="mamba", vocab=64, min_lr_ratio=2.0)
    # a test length whose sequences alone would not fit in memory, named before training
    with pytest.raises(ValueError, match=r"test length 17179869184 needs about .* GiB for 256 sequences"):
        SyntheticConfig(task="induction_heads", arch="mamba", test_lengths=[256, 2**34])


@pytest.mark.parametrize(
    "task,make",
    [
        ("induction_heads", lambda: induction_heads(3, 300, 16, gen())),
        ("selective_copying", lambda: selective_copying(3, 300, 16, 5, gen())),  # several labels per row
        ("mqar", lambda: mqar(3, 300, 16, 5, gen())),  # at different positions in each row
        ("parity", lambda: parity(3, 300, 3, gen())),  # every position
    ],
)
def test_recurrent_evaluation_equals_the_full_forward(task, make):
    cfg = SyntheticConfig(task=task, arch="mamba", d_model=32, vocab=32)  # mqar's 8 pairs need vocab > 18
    model = build(cfg).eval()
    seq, labels = make()
    with torch.no_grad():
        full = model(seq)[labels != IGNORE]
    assert torch.allclose(scored_logits(model, seq, labels), full, atol=1e-4)
    assert torch.allclose(scored_logits(model, seq, labels, span=7), full, atol=1e-4)  # the state carried


@pytest.mark.parametrize(
    "arch,d_state",
    [
        ("mamba2", 0),
        ("mamba2", 64),
        ("hybrid", 0),
        ("mamba", 8),
        ("mamba_lti", 0),
        ("mamba_lti", 8),
        ("mamba3", 0),
        ("mamba3", 16),
        ("mamba3_mimo", 0),
    ],
)
def test_every_mamba_family_builds_at_the_task_shape_and_scores_as_its_forward(arch, d_state):
    cfg = SyntheticConfig(task="mqar", arch=arch, d_model=32, d_state=d_state, vocab=32)
    model = build(cfg).eval()
    assert model.config.n_layer == 2 and model.config.d_model == 32
    if d_state:
        assert model.config.ssm["d_state"] == d_state and cfg.model_name == f"{arch}-d32-n{d_state}"
    if arch == "hybrid":
        assert model.config.attn_layer_idx == [1]  # the share of the depth follows n_layer
    seq, labels = mqar(3, 40, 16, 5, gen())
    with torch.no_grad():
        full = model(seq)[labels != IGNORE]
    assert torch.allclose(scored_logits(model, seq, labels, span=7), full, atol=1e-4)


def test_table_11s_mha_abs_is_transformer_abs_with_sinusoidal_positions():
    cfg = SyntheticConfig(task="induction_heads", arch="transformer_abs", d_model=32, d_state=8)
    model = build(cfg)
    assert model.config.position == "sinusoidal" and model.config.n_layer == 2
    assert cfg.model_name == "transformer_abs-d32"  # no SSM state to name


def test_recurrent_evaluation_runs_far_beyond_the_training_length_in_constant_memory():
    cfg = SyntheticConfig(task="induction_heads", arch="mamba", d_model=32)
    model = build(cfg).eval()

    def cache_bytes(length):
        cache = model.allocate_cache(3, length)
        return sum(
            t.numel() * t.element_size()
            for layer in cache.layers
            for t in vars(layer).values()
            if isinstance(t, torch.Tensor)
        )

    assert cache_bytes(300) == cache_bytes(1 << 20)  # the state does not grow with the length
    far = accuracy(model, cfg, length=8192, sequences=2, seed=0)  # 32x the training length
    assert 0.0 <= far <= 1.0


def test_attention_past_its_length_limit_is_recorded_as_out_of_memory_and_mamba_still_scored(tmp_path):
    results = {}
    for arch in ("transformer", "mamba"):
        cfg = SyntheticConfig(
            task="induction_heads",
            arch=arch,
            length=16,
            d_model=16,
            steps=2,
            batch=4,
            test_lengths=[16, 64],
            eval_sequences=4,
            max_attention_length=32,
        )
        results[arch] = train_synthetic(cfg, tmp_path / f"{arch}.json", log_every=2)
    assert results["transformer"]["accuracy_by_length"]["64"] is None
    assert results["transformer"]["not_run"] == {"64": "attention past max_attention_length 32"}
    assert results["transformer"]["accuracy_by_length"]["16"] is not None
    assert results["mamba"]["accuracy_by_length"]["64"] is not None and results["mamba"]["not_run"] == {}


def test_a_tiny_mamba_learns_selective_copying(tmp_path):
    """Short sequences so it fits a CPU test budget; the paper's length is in config/paper.yaml."""
    cfg = SyntheticConfig(
        task="selective_copying",
        arch="mamba",
        length=32,
        vocab=8,
        n_data=4,
        d_model=64,
        steps=1000,
        batch=32,
        lr=3e-3,
        eval_sequences=256,
    )
    result = train_synthetic(cfg, tmp_path / "copy.json", log_every=250)
    assert result["final_accuracy"] > 0.9 and result["chance"] == pytest.approx(1 / 6)
    assert json.loads((tmp_path / "copy.json").read_text())["accuracy_by_length"] == {
        "32": result["final_accuracy"]
    }
    assert [row["step"] for row in result["curve"]] == [250, 500, 750, 1000]


def test_mamba3_tracks_parity_where_mamba2_cannot(tmp_path):
    """The Mamba-3 paper's state-tracking claim at a CPU test's size: its rotating state learns the
    running parity at the training length; Mamba-2's positive decays stay near what the first
    positions give away (chance is 1/2 a position)."""
    accuracy_at = {}
    for arch in ("mamba3", "mamba2"):
        cfg = SyntheticConfig(
            task="parity",
            arch=arch,
            length=32,
            vocab=3,
            d_model=32,
            steps=400,
            batch=32,
            lr=3e-3,
            weight_decay=0.0,
            eval_sequences=64,
        )
        result = train_synthetic(cfg, tmp_path / f"{arch}.json", log_every=400)
        accuracy_at[arch] = result["accuracy_by_length"]["32"]
        assert result["chance"] == 0.5
    assert accuracy_at["mamba3"] > 0.95 and accuracy_at["mamba2"] < 0.8, accuracy_at
