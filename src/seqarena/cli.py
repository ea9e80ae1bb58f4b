"""The ``seqarena`` command: one subcommand per pipeline stage (the Snakemake rules call these).

Each stage is a function of one config dataclass, beside the code it runs; its flags are that
dataclass's fields (``seqarena.options``). The table below names each stage's function and is all
the CLI knows; a stage's module is imported only when that stage runs.
"""

import argparse
import importlib
import sys
import typing
from dataclasses import dataclass

from seqarena import __version__
from seqarena.options import add_config_arguments, config_from_args


@dataclass(frozen=True)
class Stage:
    name: str  # the words after `seqarena`
    function: str  # module:function, called with the stage's config
    help: str
    passthrough: bool = False  # the function takes the remaining words as they are

    def load(self):
        module, _, function = self.function.partition(":")
        return getattr(importlib.import_module(module), function)


STAGES = (
    Stage("sizes", "seqarena.models.sizes:print_sizes", "the named model sizes and their parameter counts"),
    Stage(
        "env",
        "seqarena.env:check_environment",
        "build the kernels, self-check every backend, write kernels.json, create the MLflow store",
    ),
    Stage("prefetch", "seqarena.prefetch:prefetch_command", "fill the HF cache for jobs on offline nodes"),
    Stage("data download", "seqarena.data:download_command", "fetch a corpus (HF hub or local files)"),
    Stage("data tokenize", "seqarena.data:tokenize_command", "tokenizer + train.bin/val.bin/meta.json"),
    Stage("train", "seqarena.training.trainer:train_command", "train (or resume) one model"),
    Stage(
        "memory", "seqarena.training.memory:memory_check_command", "warn where training jobs would not fit"
    ),
    Stage(
        "scaling", "seqarena.scaling:scaling_command", "fit scaling laws and compute multipliers across sizes"
    ),
    Stage("bench kernels", "seqarena.bench:kernels_command", "selective scan and SSD vs causal attention"),
    Stage("bench generation", "seqarena.bench:generation_command", "prompt + decoding throughput"),
    Stage("bench training", "seqarena.bench:training_command", "tokens/s, MFU and memory of training"),
    Stage("eval", "seqarena.eval:eval_command", "score a checkpoint with lm-evaluation-harness"),
    Stage(
        "lm-eval", "seqarena.eval:lm_eval_command", "lm-eval's CLI, --model seqarena in it", passthrough=True
    ),
    Stage("export", "seqarena.hf:export_command", "write a checkpoint as a Hugging Face transformers folder"),
    Stage("synthetic", "seqarena.synthetic:synthetic_command", "train and test a model on a synthetic task"),
    Stage("report", "seqarena.report.render:report_command", "render the report notebook and its HTML"),
    Stage("ui", "seqarena.tracking.commands:ui_command", "browse the MLflow tracking store (mlflow ui)"),
    Stage("gpus", "seqarena.gpus:gpus_command", "run a command on GPUs of its own: --count N -- COMMAND"),
    Stage("launch", "seqarena.launch:launch_command", "run seqarena on several processes (torchrun, srun)"),
    Stage("tracking init", "seqarena.tracking.commands:init_command", "create the tracking database"),
    Stage("tracking sync", "seqarena.tracking.commands:sync_command", "send what training journaled"),
)


def stage_of(argv: list[str]) -> Stage | None:
    """The stage whose words begin ``argv``."""
    return next((s for s in STAGES if argv[: len(s.name.split())] == s.name.split()), None)


def overview() -> argparse.ArgumentParser:
    """`seqarena --help`, `--version`, and the error for a missing or unknown stage."""
    stages = "\n".join(f"  {s.name:<18} {s.help}" for s in STAGES)
    parser = argparse.ArgumentParser(
        prog="seqarena",
        description="The pipeline's stages, one subcommand each (the Snakemake rules call these).",
        epilog=f"stages:\n{stages}\n\n`seqarena STAGE --help` lists a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seqarena {__version__}")
    parser.add_argument(
        "stage", choices=[s.name for s in STAGES], metavar="STAGE", help="one of the stages below"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    stage = stage_of(argv)
    if stage is None:
        overview().parse_args(argv[:1])  # help, version, or an error naming the stages
        return
    function, words = stage.load(), argv[len(stage.name.split()) :]
    if stage.passthrough:
        return function(words)
    config_cls = next(iter(typing.get_type_hints(function).values()))  # its one parameter's type
    parser = argparse.ArgumentParser(prog=f"seqarena {stage.name}", description=function.__doc__)
    add_config_arguments(parser, config_cls)
    function(config_from_args(config_cls, parser.parse_args(words)))


if __name__ == "__main__":
    sys.exit(main())
