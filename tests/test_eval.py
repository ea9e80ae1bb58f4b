"""Evaluation: the `seqarena` lm-eval model on local tasks, checked against our own forward pass."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import write_multiple_choice_task
from seqarena.data import byte_tokenizer
from seqarena.eval import SeqarenaLM, evaluate
from seqarena.models import build_model, from_pretrained

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "sing to it.", "label": 0},
    {
        "goal": "Keep bread fresh by",
        "sol1": "leaving it in rain.",
        "sol2": "sealing it in a bag.",
        "label": 1,
    },
    {"goal": "Boil water in", "sol1": "a kettle.", "sol2": "a paper cup over fire for days.", "label": 0},
    {"goal": "Dry wet hair with", "sol1": "a towel.", "sol2": "ice.", "label": 0},
    {"goal": "Sharpen a pencil using", "sol1": "a spoon.", "sol2": "a sharpener.", "label": 1},
    {"goal": "Cool a drink by adding", "sol1": "ice cubes.", "sol2": "hot coals.", "label": 0},
]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "mamba-tiny"
    build_model("mamba-tiny", vocab_size=257).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(byte_tokenizer().to_str())
    return folder


@pytest.fixture
def task_dir(tmp_path):
    """A PIQA-shaped multiple-choice task read from a local jsonl file."""
    text, choices = "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}"
    return write_multiple_choice_task(tmp_path / "tasks", "toy_piqa", DOCS, text, choices)


def logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) from one plain forward pass, written out independently."""
    ctx = tokenizer.encode(context, add_special_tokens=False).ids
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0, :, : model.config.vocab_size]
    logp = F.log_softmax(logits.float(), dim=-1)
    return sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))


def accuracy_by_hand(checkpoint) -> float:
    """The toy task's accuracy from plain forward passes of the checkpoint (lm-eval's " " delimiter)."""
    model, tokenizer = from_pretrained(checkpoint).eval(), byte_tokenizer()
    correct = []
    for doc in DOCS:
        context = f"Question: {doc['goal']}\nAnswer:"
        scores = [logprob(model, tokenizer, context, " " + doc[k]) for k in ("sol1", "sol2")]
        correct.append(int(max(range(2), key=lambda i: scores[i]) == doc["label"]))
    return sum(correct) / len(DOCS)


def test_multiple_choice_accuracy_equals_our_own_computation(checkpoint, task_dir, tmp_path):
    report = evaluate(
        checkpoint, ["toy_piqa"], tmp_path / "eval.json", include_path=str(task_dir), batch_size=4
    )
    acc = report["results"]["toy_piqa"]["acc"]
    assert sorted(report["results"]["toy_piqa"]) == ["acc", "acc_norm"]  # metrics only, no sample_len
    assert acc["value"] == pytest.approx(accuracy_by_hand(checkpoint), abs=1e-12)
    assert acc["stderr"] is not None
    assert (
        json.loads((tmp_path / "eval.json").read_text())["results"]["toy_piqa"]["acc"]["value"]
        == acc["value"]
    )


class Request:
    def __init__(self, *args):
        self.args = args


def plain_sum(model, context: list[int], targets: list[int]) -> float:
    """Sum of log p(target) over the last len(targets) positions of one forward of context+targets."""
    tokens = context + targets
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:-1]]))[0, :, : model.config.vocab_size]
    logp = F.log_softmax(logits.float(), -1)
    return sum(logp[len(tokens) - 1 - len(targets) + j, t].item() for j, t in enumerate(targets))


def test_rolling_loglikelihood_is_the_sum_of_token_logprobs(checkpoint):
    text = "A rolling window must score every token exactly once, however long the text is."
    lm = SeqarenaLM(str(checkpoint))
    ids = lm._encode(text)
    (total,) = lm.loglikelihood_rolling([Request(text)])
    assert total == pytest.approx(plain_sum(lm.model, [lm.eos_id], ids), rel=1e-5)  # one window: EOS + text

    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    short = SeqarenaLM(str(checkpoint), max_length=32)  # several windows
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, lm.eos_id, 32, 1)]
    assert len(windows) > 2 and sum(len(targets) for _, targets in windows) == len(ids)
    (total,) = short.loglikelihood_rolling([Request(text)])
    assert total == pytest.approx(sum(plain_sum(lm.model, c, t) for c, t in windows), rel=1e-5)


def test_batch_size_does_not_change_results(checkpoint):
    requests = [Request(f"Context number {i} says", f" continuation {'x' * i}") for i in range(11)]
    one = SeqarenaLM(str(checkpoint), batch_size=1).loglikelihood(requests)
    eight = SeqarenaLM(str(checkpoint), batch_size=8).loglikelihood(requests)
    assert [g for _, g in one] == [g for _, g in eight]
    assert [s for s, _ in eight] == pytest.approx([s for s, _ in one], rel=1e-5)


def test_generate_until_stops_at_the_stop_string(checkpoint):
    lm = SeqarenaLM(str(checkpoint))
    (free,) = lm.generate_until([Request("Once upon", {"until": ["never in here"], "max_gen_toks": 12})])
    stop = free[3:5]
    (cut,) = lm.generate_until([Request("Once upon", {"until": [stop], "max_gen_toks": 12})])
    assert len(free) >= 5 and cut == free.split(stop)[0] and len(cut) < len(free)


def test_state_spaces_layout_evaluates_through_the_same_path(checkpoint, task_dir, tmp_path):
    folder = tmp_path / "state-spaces"
    folder.mkdir()
    model = from_pretrained(checkpoint)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("tie_embeddings")  # the published files predate this field
    (folder / "config.json").write_text(json.dumps(config))
    ours = evaluate(checkpoint, ["toy_piqa"], tmp_path / "a.json", include_path=str(task_dir))
    tokenizer = str(checkpoint / "tokenizer.json")
    published = evaluate(
        folder, ["toy_piqa"], tmp_path / "b.json", tokenizer=tokenizer, include_path=str(task_dir)
    )
    assert published["results"] == ours["results"]
    assert not math.isnan(ours["results"]["toy_piqa"]["acc"]["value"])


def test_missing_tokenizer_is_named(tmp_path):
    build_model("transformer-tiny", vocab_size=257).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing.*config key eval.tokenizer"):
        SeqarenaLM(str(tmp_path))


def test_cli_eval_logs_into_the_model_run_and_lm_eval_passthrough(
    checkpoint, task_dir, tmp_path, monkeypatch, capsys
):
    import sys

    from mlflow.tracking import MlflowClient

    from seqarena.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval" / "mamba-tiny.json"
    main(
        [
            "eval",
            "--model",
            str(checkpoint),
            "--tasks",
            "toy_piqa",
            "--include-path",
            str(task_dir),
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    acc = json.loads(out.read_text())["results"]["toy_piqa"]["acc"]["value"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seqarena")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI shows runs first
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["seqarena.model_id"] == "mamba-tiny" and run.data.metrics["eval/toy_piqa/acc"] == acc
    assert run.info.status == "FINISHED"  # the stage made the run (no training did), and ended it
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == ["eval/mamba-tiny.json"]

    monkeypatch.setattr(sys, "argv", sys.argv[:])  # lm-eval's CLI reads them; restored after
    main(
        [
            "lm-eval",
            "--model",
            "seqarena",
            "--model_args",
            f"pretrained={checkpoint}",
            "--tasks",
            "toy_piqa",
            "--include_path",
            str(task_dir),
            "--output_path",
            str(tmp_path / "lm_eval_out"),
        ]
    )
    printed = capsys.readouterr().out
    assert "toy_piqa" in printed and f"{acc:.4f}" in printed


def test_other_hf_causal_lms_go_through_lm_evals_hf_model(shared_data, task_dir, tmp_path):
    """A Pythia-shaped GPT-NeoX checkpoint (as EleutherAI/pythia-* on the hub), scored by lm-eval's `hf`."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(shared_data / "20B_tokenizer.json"), eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    model = GPTNeoXForCausalLM(config).eval()
    folder = tmp_path / "pythia-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    report = evaluate(folder, ["toy_piqa"], tmp_path / "hf.json", include_path=str(task_dir), device="cpu")
    assert report["lm_eval_model"] == "hf"

    def choice_logprob(context, continuation):
        ctx = tokenizer(context)["input_ids"]
        whole = tokenizer(context + continuation)["input_ids"]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), dim=-1)
        return sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))

    correct = [
        max((0, 1), key=lambda i: choice_logprob(f"Question: {d['goal']}\nAnswer:", " " + d[f"sol{i + 1}"]))
        == d["label"]
        for d in DOCS
    ]
    assert report["results"]["toy_piqa"]["acc"]["value"] == pytest.approx(sum(correct) / len(DOCS))


def test_an_evaluation_run_again_computes_only_the_missing_answers(checkpoint, task_dir, tmp_path, caplog):
    """The answers of a first (here: shorter) evaluation are kept as they are computed; the rerun
    takes them from the cache, computes the rest, and scores as plain forward passes do."""
    from seqarena.eval import cache_key

    cache = tmp_path / "cache"
    common = dict(include_path=str(task_dir), batch_size=4, cache_dir=cache)
    evaluate(checkpoint, ["toy_piqa"], tmp_path / "first.json", limit=3, **common)
    caplog.clear()
    with caplog.at_level("INFO"):
        again = evaluate(checkpoint, ["toy_piqa"], tmp_path / "again.json", **common)
    assert "Cached requests: 6, Requests remaining: 6" in caplog.text  # 3 of 6 docs, 2 choices each
    assert again["results"]["toy_piqa"]["acc"]["value"] == pytest.approx(
        accuracy_by_hand(checkpoint), abs=1e-12
    )
    (db,) = cache.iterdir()
    assert db.name == f"{cache_key(str(checkpoint), None, [task_dir / 'toy_piqa.yaml'])}_rank0.db"


def test_the_eval_cache_key_changes_with_everything_that_changes_an_answer(
    checkpoint, task_dir, tmp_path, monkeypatch
):
    """The model's weights by content (same size, same modification time, other bytes), the given
    tokenizer by content, a hub id's resolved revision, lm-eval's version, a task's definition: each
    changed in turn misses; nothing changed hits."""
    import os

    from seqarena import eval as seqarena_eval
    from seqarena.eval import cache_key

    tokenizer_a, tokenizer_b = tmp_path / "a.json", tmp_path / "b.json"
    tokenizer_a.write_text('{"model": "a"}')
    tokenizer_b.write_text('{"model": "b"}')
    task = task_dir / "toy_piqa.yaml"

    def key(model=str(checkpoint), tokenizer=str(tokenizer_a)):
        return cache_key(model, tokenizer, [task])

    before = key()
    assert key() == before  # nothing changed: the cache is hit

    weights = next(Path(checkpoint).glob("*.safetensors"))
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight: same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same time
    assert key() != before
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert key() == before

    assert key(tokenizer=str(tokenizer_b)) != before

    original = task.read_text()
    task.write_text(original.replace("Answer:", "Answer :"))
    assert key() != before
    task.write_text(original)
    assert key() == before

    version = seqarena_eval.metadata.version
    monkeypatch.setattr(
        seqarena_eval.metadata, "version", lambda name: "0.0.1" if name == "lm_eval" else version(name)
    )
    assert key() != before
    monkeypatch.undo()

    # a hub id by the revision its cache resolves to (huggingface_hub's own lookup, offline)
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    repo = hub / "models--someone--model"
    keys = []
    for revision in ("1" * 40, "2" * 40):
        (repo / "snapshots" / revision).mkdir(parents=True)
        (repo / "snapshots" / revision / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        keys.append(key(model="someone/model"))
    assert keys[0] != keys[1]


def test_the_shipped_tasks_score_as_lm_evals_definitions_over_the_shared_files(
    checkpoint, shared_data, tmp_path
):
    """piqa_embedded and lambada_openai_embedded against the project's local YAMLs of lm-eval's piqa and
    lambada_openai over the full shared files: the same first documents, the same scores."""
    local = tmp_path / "local_tasks"
    local.mkdir()
    for name in ("lambada_openai_local", "piqa_local"):
        text = (REPO / "config/tasks" / f"{name}.yaml").read_text()
        (local / f"{name}.yaml").write_text(text.replace("../shared/data/", f"{shared_data}/"))
    shipped = evaluate(checkpoint, ["lambada_openai_embedded", "piqa_embedded"], tmp_path / "a.json", limit=6)
    given = evaluate(
        checkpoint,
        ["lambada_openai_local", "piqa_local"],
        tmp_path / "b.json",
        limit=6,
        include_path=str(local),
    )
    for task in ("lambada_openai", "piqa"):
        ours, theirs = shipped["results"][f"{task}_embedded"], given["results"][f"{task}_local"]
        assert sorted(ours) == sorted(theirs) and len(ours) == 2
        for metric in ours:
            assert ours[metric]["value"] == pytest.approx(theirs[metric]["value"], rel=1e-9)
        assert shipped["n_samples"][f"{task}_embedded"]["effective"] == 6
