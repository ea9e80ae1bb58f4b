"""The ``seqarena`` command: one subcommand per pipeline stage (the Snakemake rules call these)."""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from seqarena import __version__


def cmd_sizes(args: argparse.Namespace) -> None:
    """Print the size registry with parameter counts computed from the real modules."""
    import torch

    from seqarena.models import SIZES, build_model

    print(f"{'model id':<22} {'d_model':>7} {'n_layer':>7} {'params':>14} {'nominal':>14}")
    for arch, sizes in SIZES.items():
        for size, spec in sizes.items():
            with torch.device("meta"):  # counts without allocating memory
                model = build_model(f"{arch}-{size}", vocab_size=args.vocab_size)
            nominal = f"{spec.nominal_params:,}" if spec.nominal_params else "-"
            print(
                f"{arch + '-' + size:<22} {spec.dims['d_model']:>7} {spec.dims['n_layer']:>7} "
                f"{model.num_parameters():>14,} {nominal:>14}"
            )


def cmd_env(args: argparse.Namespace) -> None:
    from seqarena.env import write_kernels_record
    from seqarena.tracking import default_uri

    record = write_kernels_record(Path(args.out), args.tracking_uri or default_uri(Path(args.out).parents[1]))
    print(json.dumps(record, indent=2))


def cmd_data_download(args: argparse.Namespace) -> None:
    from seqarena.data import Source, download

    source = Source(
        kind=args.kind,
        path=args.path,
        name=args.name,
        format=args.format,
        text_field=args.text_field,
        sample_by=args.sample_by,
        streaming=args.streaming,
        max_chars=args.max_chars,
        document_start=args.document_start,
    )
    print(f"downloaded to {download(source, Path(args.out))}")


def cmd_data_tokenize(args: argparse.Namespace) -> None:
    from seqarena.data import tokenize

    meta = tokenize(
        Path(args.raw),
        Path(args.out),
        args.tokenizer,
        args.vocab_size,
        args.tokenizer_name,
        args.val_fraction,
        args.max_tokens,
    )
    print(
        f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab_size']}"
    )


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One flag per field of a config dataclass (the dataclass is the single source of truth):
    booleans are switches, list fields comma-separated integers, fields without a default required."""
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if f.default_factory is not dataclasses.MISSING:
            parser.add_argument(
                flag, type=_ints, default=f.default_factory(), dest=f.name, help="comma-separated"
            )
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, dest=f.name)
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", dest=f.name)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, dest=f.name)


def config_from_args(config_cls, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def cmd_train(args: argparse.Namespace) -> None:
    from seqarena.training import STOPPED_EXIT_STATUS, TrainConfig, TrainingStopped, train

    try:
        summary = train(config_from_args(TrainConfig, args))
    except TrainingStopped as stopped:
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(STOPPED_EXIT_STATUS)
    if summary:
        print(json.dumps(summary, indent=2))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def cmd_bench_kernels(args: argparse.Namespace) -> None:
    from seqarena.bench import bench_kernels, write_csv
    from seqarena.tracking import kernel_metrics, log_stage

    backends = args.backends.split(",") if args.backends else None
    rows = bench_kernels(
        args.lengths, args.batch, args.dim, args.state, repeats=args.repeats, backends=backends
    )
    write_csv(rows, Path(args.out))
    log_stage(
        args.tracking_uri, args.experiment, "kernels", kernel_metrics(rows), Path(args.out), "bench/kernels"
    )
    print(Path(args.out).read_text())


def cmd_bench_generation(args: argparse.Namespace) -> None:
    from seqarena.bench import bench_generation, write_json
    from seqarena.tracking import generation_metrics, log_stage

    result = bench_generation(
        args.model, args.prompt_len, args.new_tokens, args.batch_sizes, args.repeats, args.vocab_size
    )
    write_json(result, Path(args.out))
    run_name = Path(args.model).name
    log_stage(
        args.tracking_uri,
        args.experiment,
        run_name,
        generation_metrics(result),
        Path(args.out),
        "bench/generation",
    )
    print(json.dumps(result, indent=2))


def cmd_bench_training(args: argparse.Namespace) -> None:
    from seqarena.bench import bench_training, write_json
    from seqarena.tracking import log_stage, training_bench_metrics

    result = bench_training(
        args.model,
        args.steps,
        args.seq_len,
        args.micro_batch,
        args.vocab_size,
        args.warmup_steps,
        args.compile,
    )
    write_json(result, Path(args.out))
    metrics = training_bench_metrics(result)
    log_stage(args.tracking_uri, args.experiment, args.model, metrics, Path(args.out), "bench/training")
    print(json.dumps(result, indent=2))


def cmd_eval(args: argparse.Namespace) -> None:
    from seqarena.eval import evaluate
    from seqarena.tracking import eval_metrics, log_stage

    report = evaluate(
        args.model,
        args.tasks.split(","),
        Path(args.out),
        args.tokenizer,
        args.include_path,
        args.limit,
        args.batch_size,
        args.num_fewshot,
        args.device,
        args.cache_dir,
    )
    run_name = args.run_name or Path(args.model).name
    log_stage(args.tracking_uri, args.experiment, run_name, eval_metrics(report), Path(args.out), "eval")
    print(json.dumps(report["results"], indent=2))


def cmd_lm_eval(args: argparse.Namespace) -> None:
    """lm-eval's own command line, with the seqarena model registered."""
    from lm_eval.__main__ import cli_evaluate

    import seqarena.eval  # noqa: F401  (registers --model seqarena)

    sys.argv = ["lm-eval", *args.lm_eval_args]
    cli_evaluate()


def cmd_export(args: argparse.Namespace) -> None:
    """A checkpoint as a transformers folder; with a tracking store, also an MLflow model registered
    under its model id and linked to its training run."""
    from seqarena.hf import NotExportable, export_hf

    try:
        out = export_hf(args.model_dir, args.out_dir)
    except NotExportable as e:
        sys.exit(str(e))
    print(f"exported {args.model_dir} to {out} (transformers' AutoModelForCausalLM.from_pretrained reads it)")
    if args.tracking_uri != "none":
        from seqarena.tracking import register_hf_model

        model_id = args.model_id or Path(args.model_dir).name
        version = register_hf_model(args.tracking_uri, args.experiment, model_id, Path(args.model_dir), out)
        print(
            f"registered as {model_id!r} version {version.version} (run {version.run_id}): "
            f"mlflow.transformers.load_model('models:/{model_id}/{version.version}')"
        )


def cmd_synthetic(args: argparse.Namespace) -> None:
    from seqarena.synthetic import SyntheticConfig, train_synthetic
    from seqarena.tracking import log_stage, synthetic_metrics

    cfg = config_from_args(SyntheticConfig, args)
    result = train_synthetic(cfg, Path(args.out))
    run = f"{cfg.task}/{cfg.model_name}/seed{cfg.seed}"
    metrics = synthetic_metrics(cfg.task, result)
    log_stage(args.tracking_uri, f"{args.experiment}-synthetic", run, metrics, Path(args.out), "synthetic")
    print(
        json.dumps(
            {k: result[k] for k in ("task", "model", "final_accuracy", "accuracy_by_length")}, indent=2
        )
    )


def cmd_report(args: argparse.Namespace) -> None:
    from seqarena.report import render, save_figures

    render(Path(args.notebook), Path(args.results), Path(args.out), Path(args.html))
    if args.figures:
        saved = save_figures(Path(args.results), Path(args.figures))
        print(f"figures: {', '.join(str(p) for p in saved)}")
    print(f"report: {args.out}, {args.html}")


def cmd_tracking_init(args: argparse.Namespace) -> None:
    from seqarena.tracking import default_uri, init_store

    print(f"tracking store ready: {init_store(args.uri or default_uri(args.results))}")


def cmd_tracking_sync(args: argparse.Namespace) -> None:
    """Send what training journaled while the tracking store did not answer; where the training
    finished meanwhile (summary.json beside the journal), its outputs too, and end the run."""
    from seqarena.tracking import client_for, finish_training_run, replay_journal

    for journal in map(Path, args.journals):
        if not journal.is_file():
            sys.exit(f"{journal}: no such journal (nothing left to send, or another path)")
        for (uri, run_id), rows in replay_journal(journal).items():
            print(f"{journal}: {rows} metric rows sent to run {run_id} at {uri}")
            if (journal.parent / "summary.json").is_file():
                finish_training_run(client_for(uri), run_id, journal.parent)
                print(f"run {run_id}: outputs logged, run FINISHED")


def _after_dashes(words: list[str]) -> list[str]:
    return words[1:] if words[:1] == ["--"] else words


def cmd_gpus(args: argparse.Namespace) -> None:
    from seqarena.gpus import run_on_gpus

    run_on_gpus(args.count, _after_dashes(args.job))


def cmd_launch(args: argparse.Namespace) -> None:
    from seqarena.launch import launch

    launch(args.nodes, args.nproc_per_node, _after_dashes(args.job))


def cmd_ui(args: argparse.Namespace) -> None:
    """The MLflow UI on the pipeline's tracking store, bound to loopback unless --host says otherwise."""
    import os

    from seqarena.tracking import default_uri

    uri = args.tracking_uri or default_uri(args.results)
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}", flush=True)
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    os.execv(sys.executable, [*mlflow, "--host", args.host, "--port", str(args.port)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqarena", description=__doc__)
    parser.add_argument("--version", action="version", version=f"seqarena {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sizes = sub.add_parser("sizes", help="list the named model sizes and their parameter counts")
    sizes.add_argument("--vocab-size", type=int, default=50277, help="vocabulary (default: GPT-NeoX)")
    sizes.set_defaults(func=cmd_sizes)

    env = sub.add_parser(
        "env", help="build the kernels, self-check every backend, write kernels.json, create the MLflow store"
    )
    env.add_argument("--out", default="results/env/kernels.json")
    env.add_argument("--tracking-uri", help="default: sqlite:///<results>/mlflow.db beside --out's results")
    env.set_defaults(func=cmd_env)

    data = sub.add_parser("data", help="download and tokenize corpora").add_subparsers(
        dest="action", required=True
    )
    dl = data.add_parser("download", help="fetch a corpus (HF hub or local files) into a raw/ folder")
    dl.add_argument("--kind", choices=["hf", "local", "embedded"], required=True)
    dl.add_argument(
        "--path",
        required=True,
        help="hub id (Salesforce/wikitext), local file, glob or folder, or a shipped file (kind embedded)",
    )
    dl.add_argument("--name", help="hub dataset config, e.g. wikitext-2-raw-v1")
    dl.add_argument(
        "--format", default="text", help="local files: text, jsonl (also .jsonl.zst), json or parquet"
    )
    dl.add_argument("--text-field", default="text")
    dl.add_argument("--sample-by", default="paragraph", choices=["line", "paragraph", "document"])
    dl.add_argument(
        "--streaming", action="store_true", help="hub: stream instead of downloading it all first"
    )
    dl.add_argument("--max-chars", type=int, help="stop reading train after this many characters")
    dl.add_argument("--document-start", help="rows are lines; a row matching this regex starts a document")
    dl.add_argument("--out", required=True, help="the raw/ folder to write")
    dl.set_defaults(func=cmd_data_download)
    tok = data.add_parser("tokenize", help="tokenizer + train.bin/val.bin/meta.json from a raw/ folder")
    tok.add_argument("--raw", required=True)
    tok.add_argument("--out", required=True)
    tok.add_argument("--tokenizer", choices=["bpe", "hf", "byte"], required=True)
    tok.add_argument("--vocab-size", type=int, help="bpe: the vocabulary to train")
    tok.add_argument("--tokenizer-name", help="hf: hub id or tokenizer.json path")
    tok.add_argument(
        "--val-fraction", type=float, default=0.05, help="held out when the source has no val split"
    )
    tok.add_argument("--max-tokens", type=int, help="train tokens to write at most (the rest is not read)")
    tok.set_defaults(func=cmd_data_tokenize)

    from seqarena.training import TrainConfig

    train = sub.add_parser("train", help="train (or resume) one model")
    add_config_arguments(train, TrainConfig)
    train.set_defaults(func=cmd_train)

    bench = sub.add_parser("bench", help="benchmarks: kernels, generation, training")
    bench_sub = bench.add_subparsers(dest="action", required=True)
    kernels = bench_sub.add_parser("kernels", help="selective scan backends vs causal attention, per length")
    kernels.add_argument("--lengths", type=_ints, default=[512, 1024, 2048, 4096, 8192, 16384])
    kernels.add_argument("--batch", type=int, default=1)
    kernels.add_argument("--dim", type=int, default=1024)
    kernels.add_argument("--state", type=int, default=16)
    kernels.add_argument("--backends", default="", help="comma-separated; default: all available but torch")
    kernels.set_defaults(func=cmd_bench_kernels)
    generation = bench_sub.add_parser("generation", help="prompt + decoding throughput per batch size")
    generation.add_argument("--model", required=True, help="checkpoint folder, hub id, or model id (random)")
    generation.add_argument("--prompt-len", type=int, default=2048)
    generation.add_argument("--new-tokens", type=int, default=128)
    generation.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32, 64, 128])
    generation.set_defaults(func=cmd_bench_generation)
    training = bench_sub.add_parser("training", help="tokens/s, MFU and memory of a few training steps")
    training.add_argument("--model", required=True, help="model id")
    training.add_argument("--steps", type=int, default=5)
    training.add_argument("--seq-len", type=int, default=2048)
    training.add_argument("--micro-batch", type=int, default=8)
    training.add_argument("--warmup-steps", type=int, default=1, help="steps left out of tokens/s")
    training.add_argument("--compile", action="store_true", help="torch.compile, as training (train.compile)")
    training.set_defaults(func=cmd_bench_training)
    for p in (kernels, generation, training):
        p.add_argument("--out", required=True)
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--vocab-size", type=int, default=50277, help="for models built by id")
        p.add_argument("--tracking-uri", default="none", help="MLflow URI to log into; none: do not log")
        p.add_argument("--experiment", default="seqarena")

    from seqarena.paper import PAPER_TASKS

    ev = sub.add_parser("eval", help="score a checkpoint with lm-evaluation-harness")
    ev.add_argument(
        "--model", required=True, help="checkpoint folder (ours or state-spaces layout) or hub id"
    )
    ev.add_argument(
        "--tokenizer",
        help="for a checkpoint that ships no tokenizer.json: a tokenizer.json, folder or hub id "
        "(state-spaces/mamba-* use EleutherAI/gpt-neox-20b)",
    )
    ev.add_argument(
        "--tasks", default=",".join(PAPER_TASKS), help="comma-separated (default: the paper's Table 3)"
    )
    ev.add_argument("--include-path", help="a folder of local task YAMLs")
    ev.add_argument("--limit", type=float, help="examples per task (a fraction if below 1)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--device", help="default: cuda if available, else cpu")
    ev.add_argument(
        "--cache-dir", help="keep the model's answers here: a rerun computes only the missing ones"
    )
    ev.add_argument("--out", required=True)
    ev.add_argument("--run-name", help="the MLflow run's model id (default: the checkpoint folder's name)")
    ev.add_argument("--tracking-uri", default="none", help="MLflow URI to log into; none: do not log")
    ev.add_argument("--experiment", default="seqarena")
    ev.set_defaults(func=cmd_eval)
    lm_eval_cli = sub.add_parser(
        "lm-eval", help="lm-eval's CLI with --model seqarena available", add_help=False
    )
    lm_eval_cli.set_defaults(func=cmd_lm_eval)  # every argument after it goes to lm-eval (see main)

    export = sub.add_parser("export", help="write a checkpoint as a Hugging Face transformers folder")
    export.add_argument("--format", choices=["hf"], default="hf", help="hf: Llama, Mamba or Mamba2 classes")
    export.add_argument("model_dir", help="a seqarena checkpoint folder with its tokenizer.json")
    export.add_argument("out_dir", help="the folder to write (replaced whole)")
    export.add_argument(
        "--tracking-uri", default="none", help="also register it in this MLflow store; none: do not"
    )
    export.add_argument("--experiment", default="seqarena", help="where its run is looked for if need be")
    export.add_argument("--model-id", help="the registered name (default: the checkpoint folder's name)")
    export.set_defaults(func=cmd_export)

    from seqarena.synthetic import SyntheticConfig

    syn = sub.add_parser("synthetic", help="train and test a small model on a synthetic task")
    add_config_arguments(syn, SyntheticConfig)
    syn.add_argument("--out", required=True, help="the result JSON")
    syn.add_argument("--tracking-uri", default="none", help="MLflow URI to log into; none: do not log")
    syn.add_argument("--experiment", default="seqarena", help="runs go to <experiment>-synthetic")
    syn.set_defaults(func=cmd_synthetic)

    rep = sub.add_parser("report", help="render a report notebook (papermill) and its HTML")
    rep.add_argument("--notebook", default="notebooks/report.ipynb")
    rep.add_argument("--results", default="results")
    rep.add_argument("--out", default="results/reports/report.ipynb")
    rep.add_argument("--html", default="results/reports/report.html")
    rep.add_argument("--figures", help="also write each figure as <name>.png into this folder")
    rep.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="browse the MLflow tracking store (mlflow ui)")
    ui.add_argument("--results", default="results", help="serves sqlite:///<results>/mlflow.db")
    ui.add_argument("--tracking-uri", help="another store instead")
    ui.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    gpus = sub.add_parser(
        "gpus",
        help="run a command on GPUs of its own: seqarena gpus --count N -- COMMAND (CUDA_VISIBLE_DEVICES)",
    )
    gpus.add_argument("--count", type=int, required=True, help="how many GPUs the command gets")
    gpus.add_argument("job", nargs=argparse.REMAINDER, help="-- then the command")
    gpus.set_defaults(func=cmd_gpus)

    launch = sub.add_parser(
        "launch", help="run seqarena on several processes: torchrun on one node, srun + torchrun on many"
    )
    launch.add_argument("--nodes", type=int, default=1, help="several: srun inside a SLURM allocation")
    launch.add_argument("--nproc-per-node", type=int, default=1, help="processes per node (one per GPU)")
    launch.add_argument("job", nargs=argparse.REMAINDER, help="-- then seqarena's arguments, e.g. train ...")
    launch.set_defaults(func=cmd_launch)

    tracking = sub.add_parser("tracking", help="MLflow store").add_subparsers(dest="action", required=True)
    init = tracking.add_parser("init", help="create the tracking database once, before parallel jobs")
    init.add_argument("--uri", help="tracking URI (default: sqlite:///<results>/mlflow.db)")
    init.add_argument("--results", default="results")
    init.set_defaults(func=cmd_tracking_init)
    sync = tracking.add_parser(
        "sync", help="send the metrics that training journaled while the store was away"
    )
    sync.add_argument("journals", nargs="+", help="mlflow-journal.jsonl files (in results/train/<model>/)")
    sync.set_defaults(func=cmd_tracking_sync)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "lm-eval":
        args.lm_eval_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
