"""Generation at the paper's shape (prompt 2048, 128 new tokens) on the CPU, Mamba beside Transformer++.

    python benchmarks/generation_cpu.py                      # mini and small, batch 1, 4, 16, 64
    python benchmarks/generation_cpu.py --sizes mini --batches 16 --repeats 5

Per size and batch: the total time of ``generate`` (prompt processing + decoding, the paper's
throughput measure and ``seqarena bench generation``'s) as tokens/s, and its two parts: the
prompt (one forward that fills the cache, logits of the last position only) and the ms per
decoded token-step; then the cache's bytes per sequence at the final length and at 8x it. The
models are randomly initialised (throughput needs no training). Rows are taken in turn, one
repeat of each per round, so machine noise hits them alike; the table gives medians.
"""

import argparse
import statistics
import time

import torch

from seqarena.bench import cache_bytes
from seqarena.models import build_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="mini,small")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    P, T = args.prompt_len, args.new_tokens
    print(
        f"prompt {P}, {T} new tokens, vocab {args.vocab}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} rounds\n"
    )
    print(
        "| size | batch | Mamba tokens/s | Transformer++ tokens/s | Mamba speed-up | prompt ms (M / T) "
        "| ms per decoded step (M / T) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    memory = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        models = {arch: build_model(f"{arch}-{size}", args.vocab).eval() for arch in ("mamba", "transformer")}
        memory.append(
            (
                size,
                {
                    arch: [cache_bytes(m.allocate_cache(1, n * (P + T))) for n in (1, 8)]
                    for arch, m in models.items()
                },
            )
        )
        for batch in map(int, args.batches.split(",")):
            prompt = torch.randint(0, args.vocab, (batch, P), generator=torch.Generator().manual_seed(batch))
            times = {arch: {"total": [], "prompt": []} for arch in models}
            with torch.no_grad():
                for model in models.values():  # warm-up (and the C++ kernels' first-use build)
                    model.generate(prompt[:, :64], 2)
                for _ in range(args.repeats):
                    for arch, model in models.items():
                        cache = model.allocate_cache(batch, P + T)
                        fill = lambda m=model, c=cache, p=prompt: m(p, c, num_last_tokens=1)  # noqa: E731
                        times[arch]["prompt"].append(timed(fill))
                        times[arch]["total"].append(timed(lambda m=model, p=prompt: m.generate(p, T)))
            med = {arch: {k: statistics.median(v) for k, v in t.items()} for arch, t in times.items()}
            tps = {arch: batch * T / m["total"] for arch, m in med.items()}
            step = {arch: (m["total"] - m["prompt"]) / (T - 1) * 1e3 for arch, m in med.items()}
            print(
                f"| {size} | {batch} | {tps['mamba']:.0f} | {tps['transformer']:.0f} "
                f"| {tps['mamba'] / tps['transformer']:.2f}x "
                f"| {med['mamba']['prompt'] * 1e3:.0f} / {med['transformer']['prompt'] * 1e3:.0f} "
                f"| {step['mamba']:.2f} / {step['transformer']:.2f} |",
                flush=True,
            )
    print(f"\nCache per sequence (KiB) at {P + T} tokens and at {8 * (P + T)}:\n")
    print("| size | Mamba | Transformer++ |")
    print("|---|---:|---:|")
    for size, cache in memory:
        m, t = ([f"{b / 2**10:,.0f}" for b in cache[arch]] for arch in ("mamba", "transformer"))
        print(f"| {size} | {m[0]} / {m[1]} | {t[0]} / {t[1]} |")


if __name__ == "__main__":
    main()
