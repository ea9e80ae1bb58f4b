"""Evaluation stage: an lm-evaluation-harness ``LM`` registered as ``seqarena``.

It loads our checkpoints, published ``state-spaces/mamba-*`` folders or hub ids (through
``seqarena.models.from_pretrained``) and scores with one plain forward pass per batch:
``loglikelihood`` over length-sorted, right-padded batches (causal models: padding after a
sequence changes nothing before it), ``loglikelihood_rolling`` over lm-eval's rolling
windows, and greedy ``generate_until`` with the model's cache.
"""

import hashlib
import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from seqarena.data import EOS, load_hf_tokenizer, sha256_file
from seqarena.device import compute_device
from seqarena.files import atomic_write
from seqarena.models import from_pretrained
from seqarena.options import Tracked, option
from seqarena.paper import PAPER_TASKS
from seqarena.tracking import eval_metrics, log_stage


@register_model("seqarena")
class SeqarenaLM(LM):
    """model_args: pretrained (checkpoint folder or hub id), tokenizer (tokenizer.json, a folder
    or a hub id; default the checkpoint's own tokenizer.json), batch_size, max_length, device."""

    def __init__(
        self, pretrained: str, tokenizer: str | None = None, batch_size=8, max_length=2048, device=None
    ):
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = compute_device()  # lm-eval's CLI asks for cuda by default; the config's device decides
        self.model = from_pretrained(pretrained, device=device).eval()
        if tokenizer is None:
            tokenizer = Path(pretrained) / "tokenizer.json"
            if not tokenizer.is_file():
                raise FileNotFoundError(
                    f"{tokenizer} is missing: {pretrained} ships no tokenizer. Give one: the config key "
                    "eval.tokenizer, seqarena eval --tokenizer, or model_args tokenizer=<tokenizer.json, "
                    "folder or hub id> (state-spaces/mamba-* use EleutherAI/gpt-neox-20b)"
                )
        self.tokenizer = load_hf_tokenizer(str(tokenizer))
        eos = self.tokenizer.token_to_id(EOS)
        self.eos_id = 0 if eos is None else eos
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self._device = torch.device(device)  # lm-eval's LM exposes it as .device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v}
        return cls(**{**args, **extra})

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation tokens, the continuation cut from the whole (as lm-eval's HF LM)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.eos_id], self._encode(continuation)
        context_ids, whole = self._encode(context), self._encode(context + continuation)
        return context_ids, whole[len(context_ids) :]

    @torch.no_grad()
    def _score(
        self, pairs: list[tuple[list[int], list[int]]], desc: str, done=None
    ) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy choice) per pair; ``done(i, result)``
        hears each as soon as it is known (lm-eval's cache stores it then)."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=len(order) < 50):
            batch = order[start : start + self.batch_size]
            rows = []
            for i in batch:
                context, continuation = pairs[i]
                tokens = (context + continuation)[-(self.max_length + 1) :]
                rows.append((tokens[:-1], len(continuation)))
            width = max(len(inputs) for inputs, _ in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long, device=self._device)
            for r, (inputs, _) in enumerate(rows):
                ids[r, : len(inputs)] = torch.tensor(inputs)
            logprobs = F.log_softmax(self.model(ids)[..., : self.model.config.vocab_size].float(), dim=-1)
            for r, i in enumerate(batch):
                inputs, n = rows[r]
                targets = torch.tensor(pairs[i][1][-n:], device=self._device)
                positions = logprobs[r, len(inputs) - n : len(inputs)]
                score = positions.gather(-1, targets[:, None]).sum().item()
                results[i] = (score, bool((positions.argmax(-1) == targets).all()))
                if done:
                    done(i, results[i])
        return results

    def loglikelihood(self, requests):
        pairs = [self._split(*request.args) for request in requests]

        def cache(i, result):
            self.cache_hook.add_partial("loglikelihood", requests[i].args, result)

        return self._score(pairs, "loglikelihood", cache)

    def loglikelihood_rolling(self, requests):
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        pairs, owner = [], []
        for index, request in enumerate(requests):
            windows = get_rolling_token_windows(
                token_list=self._encode(request.args[0]),
                prefix_token=self.eos_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for window in windows:
                pairs.append(make_disjoint_window(window))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (score, _) in zip(owner, self._score(pairs, "loglikelihood_rolling"), strict=True):
            totals[index] += score
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests):
        outputs = []
        for request in tqdm(requests, desc="generate_until", disable=len(requests) < 50):
            context, kwargs = request.args
            until = kwargs.get("until") or [EOS]
            until = [until] if isinstance(until, str) else until
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = self._encode(context)[-(self.max_length - max_new) :] or [self.eos_id]
            prompt = torch.tensor([ids], device=self._device)
            new = self.model.generate(prompt, max_new_tokens=max_new)[0, len(ids) :].tolist()
            if self.eos_id in new:
                new = new[: new.index(self.eos_id)]
            text = self.tokenizer.decode(new)
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        return outputs


def is_seqarena_checkpoint(pretrained: str) -> bool:
    """Ours or mamba_ssm's (read through the seqarena model); any other HF causal LM (e.g.
    ``EleutherAI/pythia-160m``) goes to lm-eval's own ``hf`` model."""
    path = Path(pretrained) / "config.json"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(pretrained, "config.json"))
    config = json.loads(path.read_text())
    return "ssm_cfg" in config or config.get("arch") == "transformer"


# The files of a model folder that loading reads: config, weights, tokenizer.
LOADED_FILES = (
    "config.json",
    "*.safetensors",
    "*.bin",
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def _source_identity(name_or_path: str, file: str) -> str:
    """A local folder by the contents of the files loading reads (or a file by its contents), a hub
    id by the revision it resolves to (the snapshot folder of ``file``, a commit hash)."""
    path = Path(name_or_path)
    if path.is_file():
        return f"{path.name} {sha256_file(path)}"
    if path.is_dir():
        files = sorted({f for pattern in LOADED_FILES for f in path.glob(pattern) if f.is_file()})
        return "\n".join(f"{f.name} {sha256_file(f)}" for f in files)
    from huggingface_hub import hf_hub_download

    return f"{name_or_path}@{Path(hf_hub_download(name_or_path, file)).parent.name}"


def cache_key(pretrained: str, tokenizer: str | None, task_yamls: list[Path]) -> str:
    """Which answers a cache of model answers may serve: lm-eval keys each by its request text only,
    so the file's name carries everything else that changes an answer: the model (its config,
    weights and own tokenizer files by content; a hub id by its resolved revision), the tokenizer
    given for a model that ships none (by content or revision), lm-eval's version and the tasks'
    definitions (their YAML files' contents)."""
    parts = [_source_identity(pretrained, "config.json"), f"lm_eval {metadata.version('lm_eval')}"]
    if tokenizer is not None:
        parts.append(f"tokenizer {_source_identity(tokenizer, 'tokenizer.json')}")
    parts += [f"task {path.name} {sha256_file(path)}" for path in sorted(task_yamls)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def task_manager(tasks, include_paths):
    """lm-eval's TaskManager over ``include_paths``, with lm-eval's own thousands of task YAMLs
    indexed (seconds of parsing) only when a task is not found in those paths."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=include_paths, include_defaults=False)
    return local if set(tasks) <= set(local.all_tasks) else TaskManager(include_path=include_paths)


def answer_cache(cache_dir: Path, pretrained: str, tokenizer: str | None, tasks, manager) -> str:
    """The sqlite file under ``cache_dir`` whose answers this evaluation may use (``cache_key``)."""
    entries = [manager.task_index.get(t) for t in tasks]
    yamls = [e.yaml_path for e in entries if e is not None and e.yaml_path]
    return str(cache_dir / cache_key(pretrained, tokenizer, yamls))


def _metrics(results: dict) -> dict:
    """lm-eval's {"acc,none": v, "acc_stderr,none": s, "alias": ...} -> {"acc": {value, stderr}}."""
    entries = {}
    for key, value in results.items():
        name, comma, _filter = key.partition(",")
        if not comma or name.endswith("_stderr"):  # a metric is "name,filter"; not alias, sample_len
            continue
        stderr = results.get(f"{name}_stderr,{_filter}")
        entries[name] = {"value": value, "stderr": None if stderr in (None, "N/A") else stderr}
    return entries


def evaluate(
    pretrained,
    tasks,
    out,
    tokenizer=None,
    include_path=None,
    limit=None,
    batch_size=8,
    num_fewshot=None,
    device=None,
    cache_dir=None,
) -> dict:
    """Run lm-eval on the tasks and write {task: {metric: {value, stderr}}} plus lm-eval's config.

    Tasks are lm-eval's, the package's shipped ones (``seqarena.embedded``: ``*_embedded``) and
    those in ``include_path``. ``tokenizer`` serves checkpoints that ship none (published
    ``state-spaces/mamba-*`` use GPT-NeoX's); ours and other HF models bring their own, which wins.
    ``cache_dir`` keeps every answer of the model as soon as it is computed (lm-eval's
    ``use_cache``, one sqlite file per ``cache_key``: checkpoint, tokenizer, lm-eval version and
    task definitions): an interrupted evaluation, run again, computes only what is missing."""
    import lm_eval
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models, "hf" among them)

    from seqarena.embedded import TASKS

    model = "seqarena" if is_seqarena_checkpoint(str(pretrained)) else "hf"
    own_tokenizer = (Path(pretrained) / "tokenizer.json").is_file()
    model_args = f"pretrained={pretrained}"
    include_paths = [TASKS, include_path] if include_path else [TASKS]  # the shipped tasks, always
    given_tokenizer = tokenizer if tokenizer and model == "seqarena" and not own_tokenizer else None
    if given_tokenizer:  # HF models and ours bring their own
        model_args += f",tokenizer={given_tokenizer}"
    manager = task_manager(tasks, include_paths)
    use_cache = None
    if cache_dir:
        use_cache = answer_cache(Path(cache_dir), str(pretrained), given_tokenizer, tasks, manager)
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(tasks),
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        device=device,
        task_manager=manager,
        use_cache=use_cache,
    )
    report = {
        "model": str(pretrained),
        "lm_eval_model": model,
        "results": {task: _metrics(values) for task, values in results["results"].items()},
        "n_samples": results.get("n-samples"),
        "config": {k: str(v) for k, v in results.get("config", {}).items()},
        "versions": results.get("versions"),
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
    }
    text = json.dumps(report, indent=2, default=str) + "\n"
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text(text))
    return report


@dataclass(kw_only=True)
class EvalConfig(Tracked):
    model: str = option(help="checkpoint folder (ours or state-spaces layout) or hub id")
    tokenizer: str | None = option(
        None,
        help="for a checkpoint that ships no tokenizer.json: a tokenizer.json, folder or hub id "
        "(state-spaces/mamba-* use EleutherAI/gpt-neox-20b)",
    )
    tasks: str = option(",".join(PAPER_TASKS), help="comma-separated (default: the paper's Table 3)")
    include_path: str | None = option(None, help="a folder of local task YAMLs")
    limit: float | None = option(None, help="examples per task (a fraction if below 1)")
    batch_size: int = 8
    num_fewshot: int | None = None
    device: str | None = option(None, help="default: cuda if available, else cpu")
    cache_dir: str | None = option(
        None, help="keep the model's answers here: a rerun computes only the missing ones"
    )
    out: str = option(help="the scores to write")
    run_name: str | None = option(
        None, help="the MLflow run's model id (default: the checkpoint folder's name)"
    )


def eval_command(cfg: EvalConfig) -> None:
    """Score a checkpoint with lm-evaluation-harness and log the scores to its run."""
    report = evaluate(
        cfg.model,
        cfg.tasks.split(","),
        Path(cfg.out),
        cfg.tokenizer,
        cfg.include_path,
        cfg.limit,
        cfg.batch_size,
        cfg.num_fewshot,
        cfg.device,
        cfg.cache_dir,
    )
    run_name = cfg.run_name or Path(cfg.model).name
    log_stage(cfg.tracking_uri, cfg.experiment, run_name, eval_metrics(report), Path(cfg.out), "eval")
    print(json.dumps(report["results"], indent=2))


def lm_eval_command(args: list[str]) -> None:
    """lm-eval's own command line, with ``--model seqarena`` registered (this module did)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *args]
    cli_evaluate()
