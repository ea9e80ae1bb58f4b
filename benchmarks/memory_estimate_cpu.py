"""The training-memory estimate (seqarena.training.memory) beside what autograd keeps, on this CPU.

    python benchmarks/memory_estimate_cpu.py                 # batch 8 x 512, vocabulary 4096

Per model, without and with activation checkpointing: the bytes a forward pass and its loss keep
for the backward pass (every storage autograd saves, counted once, the parameters' aside: a
measurement) and the estimate's activations and logits in float32, side by side.
"""

import argparse

import torch

from seqarena.models import build_model
from seqarena.training.memory import estimate_training_memory, kept_for_backward
from seqarena.training.parallel import checkpoint_activations

ARCHS = ("transformer", "mamba", "mamba2", "hybrid", "mamba_lti")
MODELS = [f"{arch}-{size}" for arch in ARCHS for size in ("tiny", "small")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    print(f"batch {args.batch} x {args.seq_len} tokens, vocabulary {args.vocab_size}, float32")
    print("| model | checkpointed | kept, measured (MiB) | estimate (MiB) | measured / estimate |")
    print("|---|---|---:|---:|---:|")
    for model_id in args.models.split(","):
        for checkpointed in (False, True):
            torch.manual_seed(0)
            model = build_model(model_id, vocab_size=args.vocab_size)
            if checkpointed:
                checkpoint_activations(model)
            tokens = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1))
            measured = kept_for_backward(model, tokens)
            shape = (model_id, args.vocab_size, args.batch, args.seq_len)
            estimate = estimate_training_memory(
                *shape, activation_checkpointing=checkpointed, activation_bytes=4
            )
            estimated = estimate.activations + estimate.logits
            row = [model_id, "yes" if checkpointed else "no", f"{measured / 2**20:,.0f}"]
            row += [f"{estimated / 2**20:,.0f}", f"{measured / estimated:.2f}"]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
