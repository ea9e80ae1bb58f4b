"""Activation memory of a training step with and without activation checkpointing, side by side.

    python benchmarks/activation_memory_cpu.py                     # tiny, mini, small; batch 8 x 512
    python benchmarks/activation_memory_cpu.py --models mamba-small --batch 4 --seq-len 2048

Per model: the bytes autograd keeps for the backward pass (every tensor its saved-tensor hooks
see, counted once per save: a measurement, not an estimate), with and without
``train.activation_checkpointing``, and the time of a forward+backward with it over without
(the price: about one more forward; the fastest of ``--repeats``, taken in turn). The weights,
gradients and AdamW's state (16 bytes a parameter) come on top and do not change. The logits
(batch x length x vocabulary) are kept either way: at a small width they dominate.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from seqarena.models import build_model
from seqarena.training.parallel import checkpoint_activations

MODELS = [
    f"{arch}-{size}" for size in ("tiny", "mini", "small") for arch in ("mamba", "mamba2", "transformer")
]


def step(model, x) -> tuple[int, float]:
    """(bytes saved for the backward pass, seconds) of one forward+backward."""
    saved = []

    def pack(tensor):
        saved.append(tensor.nbytes)
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    return sum(saved), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each (the fastest is kept)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"batch {args.batch} x {args.seq_len} tokens, vocabulary {args.vocab_size}, {threads} threads")
    print("| model | kept (MiB) | kept, checkpointed (MiB) | ratio | time ratio |")
    print("|---|---:|---:|---:|---:|")
    x = torch.randint(0, args.vocab_size, (args.batch, args.seq_len + 1))
    for model_id in args.models.split(","):
        plain = build_model(model_id, vocab_size=args.vocab_size)
        checkpointed = build_model(model_id, vocab_size=args.vocab_size)
        checkpoint_activations(checkpointed)
        runs = {"plain": [], "checkpointed": []}
        for _ in range(args.repeats + 1):  # in turn, so noise hits both alike; the first is a warm-up
            for name, model in (("plain", plain), ("checkpointed", checkpointed)):
                runs[name].append(step(model, x))
        (kept, _), (kept_c, _) = runs["plain"][0], runs["checkpointed"][0]
        seconds, seconds_c = (min(s for _, s in runs[name][1:]) for name in ("plain", "checkpointed"))
        print(
            f"| {model_id} | {kept / 2**20:,.0f} | {kept_c / 2**20:,.0f} | {kept / kept_c:.1f}x "
            f"| {seconds_c / seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
