"""The ``seqarena`` command: one subcommand per pipeline stage (the Snakemake rules call these)."""

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqarena", description=__doc__)
    parser.add_argument("--version", action="version", version=f"seqarena {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sizes = sub.add_parser("sizes", help="list the named model sizes and their parameter counts")
    sizes.add_argument("--vocab-size", type=int, default=50277, help="vocabulary (default: GPT-NeoX)")
    sizes.set_defaults(func=cmd_sizes)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
