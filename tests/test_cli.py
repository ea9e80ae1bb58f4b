"""The command line: one table of stages, each stage's flags built from its config dataclass."""

import argparse

import pytest

from seqarena.cli import STAGES, main
from seqarena.options import add_config_arguments, config_from_args


def test_the_overview_lists_every_stage_and_an_unknown_one_is_refused_naming_them(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    assert all(f"  {stage.name} " in listed for stage in STAGES)
    with pytest.raises(SystemExit) as done:
        main(["data"])  # a stage's first word only
    assert done.value.code == 2 and "'data download', 'data tokenize'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", [s for s in STAGES if not s.passthrough], ids=lambda s: s.name)
def test_every_stage_has_help_built_from_its_config(stage, capsys):
    with pytest.raises(SystemExit) as done:
        main([*stage.name.split(), "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: seqarena {stage.name} [-h]")


def test_a_zero_a_switch_a_list_and_an_unset_optional_reach_the_config_as_given():
    from seqarena.bench import KernelBenchConfig
    from seqarena.training import TrainConfig

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    words = ["--model", "mamba-tiny", "--data", "d", "--out", "o", "--weight-decay", "0", "--warmup", "0"]
    cfg = config_from_args(TrainConfig, parser.parse_args([*words, "--compile"]))
    assert (cfg.weight_decay, cfg.warmup, cfg.compile, cfg.force_restart) == (0, 0, True, False)
    with pytest.raises(SystemExit):
        parser.parse_args(words[2:])  # --model is required: its field has no default
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, KernelBenchConfig)
    cfg = config_from_args(KernelBenchConfig, parser.parse_args(["--out", "k.csv", "--lengths", "64,128"]))
    assert cfg.lengths == [64, 128] and cfg.backends == "" and cfg.tracking_uri == "none"


def test_sizes_says_the_vocabulary_its_counts_are_for(capsys):
    """A tiny model's parameters are mostly its embedding: 3.3M at GPT-NeoX's vocabulary, far fewer
    at the default pipeline's 512."""
    counts = {}
    for vocab in (50277, 512):
        main(["sizes", "--vocab-size", str(vocab)])
        out = capsys.readouterr().out
        assert out.startswith(f"parameters at a vocabulary of {vocab:,} ")
        row = next(line for line in out.splitlines() if line.startswith("mamba-tiny "))
        counts[vocab] = int(row.split()[3].replace(",", ""))
    assert counts[50277] > 5 * counts[512]
