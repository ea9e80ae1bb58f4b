"""The ``seqarena`` command: one subcommand per pipeline stage (the Snakemake rules call these)."""

import argparse
import json
import sys
from pathlib import Path

from seqarena import __version__


def cmd_sizes(args: argparse.Namespace) -> None:
    """Print the size registry with parameter counts computed from the real modules."""
    import torch

    from seqarena.models import SIZES, build_model

    print(f"{'model id':<18} {'d_model':>7} {'n_layer':>7} {'params':>14} {'nominal':>14}")
    for arch, sizes in SIZES.items():
        for size, spec in sizes.items():
            with torch.device("meta"):  # counts without allocating memory
                model = build_model(f"{arch}-{size}", vocab_size=args.vocab_size)
            nominal = f"{spec.nominal_params:,}" if spec.nominal_params else "-"
            print(
                f"{arch + '-' + size:<18} {spec.dims['d_model']:>7} {spec.dims['n_layer']:>7} "
                f"{model.num_parameters():>14,} {nominal:>14}"
            )


def cmd_data_download(args: argparse.Namespace) -> None:
    from seqarena.data import Source, download

    source = Source(
        kind=args.kind, path=args.path, name=args.name, format=args.format, text_field=args.text_field,
        sample_by=args.sample_by, streaming=args.streaming, max_chars=args.max_chars,
    )  # fmt: skip
    print(f"downloaded to {download(source, Path(args.out))}")


def cmd_data_tokenize(args: argparse.Namespace) -> None:
    from seqarena.data import tokenize

    meta = tokenize(Path(args.raw), Path(args.out), args.tokenizer, args.vocab_size, args.tokenizer_name,
                    args.val_fraction)  # fmt: skip
    print(f"{args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocab {meta['vocab_size']}")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from seqarena.train import config_from_args, train

    summary = train(config_from_args(args))
    if summary:
        print(json.dumps(summary, indent=2))


def cmd_tracking_init(args: argparse.Namespace) -> None:
    from seqarena.tracking import default_uri, init_store

    print(f"tracking store ready: {init_store(args.uri or default_uri(args.results))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqarena", description=__doc__)
    parser.add_argument("--version", action="version", version=f"seqarena {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sizes = sub.add_parser("sizes", help="list the named model sizes and their parameter counts")
    sizes.add_argument("--vocab-size", type=int, default=50277, help="vocabulary (default: GPT-NeoX)")
    sizes.set_defaults(func=cmd_sizes)

    data = sub.add_parser("data", help="download and tokenize corpora").add_subparsers(
        dest="action", required=True
    )
    dl = data.add_parser("download", help="fetch a corpus (HF hub or local files) into a raw/ folder")
    dl.add_argument("--kind", choices=["hf", "local"], required=True)
    dl.add_argument(
        "--path", required=True, help="hub id (Salesforce/wikitext) or local file, glob or folder"
    )
    dl.add_argument("--name", help="hub dataset config, e.g. wikitext-2-raw-v1")
    dl.add_argument("--format", default="text", help="local files: text, jsonl, json or parquet")
    dl.add_argument("--text-field", default="text")
    dl.add_argument("--sample-by", default="paragraph", choices=["line", "paragraph", "document"])
    dl.add_argument("--streaming", action="store_true", help="stream from the hub up to --max-chars")
    dl.add_argument("--max-chars", type=int)
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
    tok.set_defaults(func=cmd_data_tokenize)

    from seqarena.train import add_arguments

    train = sub.add_parser("train", help="train (or resume) one model")
    add_arguments(train)
    train.set_defaults(func=cmd_train)

    tracking = sub.add_parser("tracking", help="MLflow store").add_subparsers(dest="action", required=True)
    init = tracking.add_parser("init", help="create the tracking database once, before parallel jobs")
    init.add_argument("--uri", help="tracking URI (default: sqlite:///<results>/mlflow.db)")
    init.add_argument("--results", default="results")
    init.set_defaults(func=cmd_tracking_init)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
