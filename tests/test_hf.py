"""Hugging Face format both ways: transformers' own classes are the oracle for the export (Llama,
Mamba, Mamba2) and for reading transformers-made folders; lm-eval's own `hf` model scores the export
as our `seqarena` model scores the checkpoint."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from conftest import write_multiple_choice_task
from seqarena.cli import main
from seqarena.data import byte_tokenizer
from seqarena.eval import evaluate
from seqarena.hf import NotExportable, export_hf
from seqarena.models import build_model, from_pretrained

REPO_TASKS = Path(__file__).resolve().parents[1] / "config/tasks"
VOCAB = 257  # the byte tokenizer's: not a multiple of 8, so our embedding has padding rows
EXPORTS = {
    "transformer-tiny": "LlamaForCausalLM",
    "mamba-tiny": "MambaForCausalLM",
    "mamba2-tiny": "Mamba2ForCausalLM",
}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def write_checkpoint(folder, model_id, **overrides):
    """A checkpoint as training leaves it, weights moved off their initial values (a freshly
    initialised model has zero biases and equal A rows, which could hide a swapped name)."""
    model = build_model(model_id, vocab_size=VOCAB, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(byte_tokenizer().to_str())
    return model.eval()


@pytest.mark.parametrize("model_id", EXPORTS)
def test_an_export_loads_in_transformers_with_our_logits_and_reads_back(model_id, tmp_path):
    ours = write_checkpoint(tmp_path / model_id, model_id)
    out = export_hf(tmp_path / model_id, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(theirs).__name__ == EXPORTS[model_id]
    ids = torch.randint(0, VOCAB, (2, 45))  # past one 32-token Mamba-2 chunk
    with torch.no_grad():
        expected = ours(ids)[..., :VOCAB]
        assert theirs.config.vocab_size == VOCAB  # the padding rows are no token: left out
        assert relative_error(expected, theirs(ids).logits) <= 1e-5
        back = from_pretrained(out).eval()
        assert relative_error(expected, back(ids)[..., :VOCAB]) <= 1e-6
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("a b").input_ids == byte_tokenizer().encode("a b").ids
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == VOCAB - 1


def test_export_replaces_the_old_folder_whole_and_the_cli_says_how_to_load_it(tmp_path, capsys):
    write_checkpoint(tmp_path / "mamba-tiny", "mamba-tiny")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.bin").write_text("from an older export")
    main(["export", "--format", "hf", str(tmp_path / "mamba-tiny"), str(out)])
    assert "from_pretrained" in capsys.readouterr().out
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mamba-tiny"]  # no staging left behind


@pytest.mark.parametrize(
    "model_id,overrides,named",
    [
        ("hybrid-tiny", {}, r"a Mamba-2 hybrid .* attention layers at \[2\]"),
        ("mamba_lti-tiny", {}, r"non-selective Mamba .* not computed from the input"),
        ("mamba3-tiny", {}, r"Mamba-3 .* transformers has no Mamba-3 class"),
        ("mamba3_mimo-tiny", {}, r"Mamba-3 .* transformers has no Mamba-3 class"),
        ("transformer_abs-tiny", {}, r"absolute sinusoidal positions .*position='sinusoidal'"),
        ("mamba-tiny", {"d_intermediate": 64}, "d_intermediate=64"),
        ("mamba-tiny", {"rms_norm": False}, "rms_norm=False"),
        ("mamba2-tiny", {"ssm_cfg": {"layer": "Mamba2", "headdim": 32, "D_has_hdim": True}}, "D_has_hdim"),
    ],
)
def test_what_transformers_cannot_build_is_refused_naming_it(model_id, overrides, named, tmp_path):
    write_checkpoint(tmp_path / "model", model_id, **overrides)
    with pytest.raises(NotExportable, match=named) as refused:
        export_hf(tmp_path / "model", tmp_path / "hf")
    assert "Hugging Face format" in str(refused.value)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(SystemExit, match=named):  # the command says it without a traceback
        main(["export", str(tmp_path / "model"), str(tmp_path / "hf")])


def test_the_exportable_families_agree_in_the_table_the_schema_and_the_export():
    """The driver cannot import seqarena, so the schema restates the exportable families; the
    families table, the schema and what the export accepts must agree."""
    import yaml

    from seqarena.hf import hf_config
    from seqarena.models import FAMILIES

    schema = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text()
    )
    listed = set(schema["$defs"]["hf_exportable_family"]["enum"])
    in_table = {name for name, family in FAMILIES.items() if family.hf_model_type}
    accepted = set()
    for arch in FAMILIES:
        try:
            hf_config(build_model(f"{arch}-tiny", vocab_size=VOCAB), eos_id=0)
            accepted.add(arch)
        except NotExportable:
            pass
    assert listed == in_table == accepted == {"mamba", "mamba2", "transformer"}


def test_a_checkpoint_without_its_tokenizer_is_refused_naming_the_file(tmp_path):
    write_checkpoint(tmp_path / "m", "mamba-tiny")
    (tmp_path / "m/tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="m/tokenizer.json"):
        export_hf(tmp_path / "m", tmp_path / "hf")


HF_MADE = {
    # the shape of state-spaces/mamba-130m-hf (vocab padded to 50280 by its authors), scaled down
    "mamba": lambda: transformers.MambaConfig(
        vocab_size=1000, hidden_size=48, num_hidden_layers=2, state_size=8, time_step_rank=5
    ),
    "mamba2": lambda: transformers.Mamba2Config(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_heads=8,
        head_dim=16,
        n_groups=2,
        state_size=16,
        chunk_size=16,
        tie_word_embeddings=False,
    ),
    # a LLaMA as transformers makes it: untied head, eps 1e-6, another rope base
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
    ),
}


@pytest.mark.parametrize("kind", HF_MADE)
def test_from_pretrained_reads_a_folder_that_transformers_wrote(kind, tmp_path):
    theirs = transformers.AutoModelForCausalLM.from_config(HF_MADE[kind]()).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path, max_shard_size="40KB")  # sharded, as the larger *-hf checkpoints
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    ours = from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 1000, (2, 40))
    with torch.no_grad():
        assert relative_error(ours(ids)[..., :1000], theirs(ids).logits) <= 1e-5


def test_a_transformers_layout_seqarena_cannot_build_is_named_with_its_file(tmp_path):
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"config.json: num_key_value_heads=2; .* needs 4"):
        from_pretrained(tmp_path)


def test_lm_evals_own_hf_model_scores_the_export_as_seqarena_scores_the_checkpoint(shared_data, tmp_path):
    """Both paths of seqarena eval: our `seqarena` LM on the checkpoint, lm-eval's `hf` LM (transformers'
    LlamaForCausalLM) on the export; a multiple-choice task and a LAMBADA slice (loglikelihood,
    perplexity and greedy accuracy)."""
    write_checkpoint(tmp_path / "model", "transformer-tiny")
    export_hf(tmp_path / "model", tmp_path / "hf")
    tasks = tmp_path / "tasks"
    docs = [json.loads(line) for line in (shared_data / "piqa_valid.jsonl").read_text().splitlines()[:12]]
    write_multiple_choice_task(tasks, "piqa_slice", docs, "Question: {{goal}}\\nAnswer:", "{{[sol1, sol2]}}")
    lambada = (shared_data / "lambada_test.jsonl").read_text().splitlines()[:8]
    (tasks / "lambada_slice.jsonl").write_text("\n".join(lambada) + "\n")
    lambada_yaml = (REPO_TASKS / "lambada_openai_local.yaml").read_text()
    lambada_yaml = lambada_yaml.replace("lambada_openai_local", "lambada_slice").replace(
        "../shared/data/lambada_test.jsonl", str(tasks / "lambada_slice.jsonl")
    )
    (tasks / "lambada_slice.yaml").write_text(lambada_yaml)

    common = dict(include_path=str(tasks), batch_size=4, device="cpu")
    ours = evaluate(tmp_path / "model", ["piqa_slice", "lambada_slice"], tmp_path / "ours.json", **common)
    theirs = evaluate(tmp_path / "hf", ["piqa_slice", "lambada_slice"], tmp_path / "theirs.json", **common)
    assert (ours["lm_eval_model"], theirs["lm_eval_model"]) == ("seqarena", "hf")
    assert ours["n_samples"] == theirs["n_samples"]
    for task in ("piqa_slice", "lambada_slice"):
        assert ours["results"][task].keys() == theirs["results"][task].keys()
        for metric, entry in ours["results"][task].items():
            assert entry["value"] == pytest.approx(theirs["results"][task][metric]["value"], rel=1e-5), metric
    assert ours["results"]["lambada_slice"]["perplexity"]["value"] > 1.0  # a real score, not an empty one


def test_an_export_is_registered_once_per_training_run_and_loads_back_through_mlflow(tmp_path, capsys):
    """The MLflow model registry: a version under the model id, linked to the training run, loaded back
    by MLflow's transformers flavour alone; exporting again adds no version, and the run's end (the
    UI's Duration) stays where training put it."""
    import mlflow
    from mlflow import MlflowClient

    from seqarena.tracking import ModelRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = ModelRun(uri, "seqarena", "mamba-tiny")
    run.finish()
    trained = MlflowClient(uri).get_run(run.run_id).info
    ours = write_checkpoint(tmp_path / "mamba-tiny", "mamba-tiny")
    (tmp_path / "mamba-tiny/summary.json").write_text(json.dumps({"mlflow_run_id": run.run_id}))
    export = ["export", str(tmp_path / "mamba-tiny"), str(tmp_path / "hf"), "--tracking-uri", uri]
    main(export)
    main(export)
    assert "registered as 'mamba-tiny' version 1" in capsys.readouterr().out.splitlines()[-1]

    client = MlflowClient(uri, registry_uri=uri)
    (version,) = client.search_model_versions("name = 'mamba-tiny'")
    exported = client.get_run(run.run_id).info
    assert version.run_id == run.run_id and exported.status == "FINISHED"
    assert exported.end_time == trained.end_time
    mlflow.set_registry_uri(uri)
    pipeline = mlflow.transformers.load_model("models:/mamba-tiny/1")
    assert type(pipeline.model).__name__ == "MambaForCausalLM"
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        assert relative_error(ours(ids)[..., :VOCAB], pipeline.model(ids).logits) <= 1e-5
