"""Forward time against sequence length on the CPU: Mamba-3, Mamba-2 (SSD), Mamba-1 and Transformer++.

    python benchmarks/length_scaling_cpu.py          # d_model 256, B=1, L 512..4096, float32

Each row is one model's forward (no gradients) at one length, the models taken in turn at
every repeat so machine noise hits them alike; medians. "per token vs L=512" divides the time
per token by that at the shortest length: 1.0 is linear in L, and attention's grows with L.
Mamba, Mamba-2 and Mamba-3 (SISO, and MIMO at rank 4; the CPU sizes' state, heads and chunks)
use 2n layers, Transformer++ n (matched parameters, the paper's pairing).
"""

import argparse
import statistics
import time

import torch

from seqarena.models import Mamba, MambaConfig, Transformer, TransformerConfig


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4, help="Mamba layers (the Transformer gets half)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mamba2-chunk", type=int, default=32)
    args = parser.parse_args()
    d, n, vocab = args.d_model, args.n_layer, args.vocab
    lengths = [int(x) for x in args.lengths.split(",")]
    mamba2 = dict(layer="Mamba2", d_state=32, headdim=32, chunk_size=args.mamba2_chunk)
    torch.manual_seed(0)
    mamba3 = dict(layer="Mamba3", d_state=32, headdim=32, chunk_size=32)
    mimo = mamba3 | dict(is_mimo=True, mimo_rank=4, chunk_size=8)
    models = {
        "Mamba-3 SISO (chunk 32)": Mamba(MambaConfig(d_model=d, n_layer=n, vocab_size=vocab, ssm_cfg=mamba3)),
        "Mamba-3 MIMO (rank 4, chunk 8)": Mamba(
            MambaConfig(d_model=d, n_layer=n, vocab_size=vocab, ssm_cfg=mimo)
        ),
        f"Mamba-2 (SSD, chunk {args.mamba2_chunk})": Mamba(
            MambaConfig(d_model=d, n_layer=n, vocab_size=vocab, ssm_cfg=mamba2)
        ),
        "Mamba (cpp scan)": Mamba(MambaConfig(d_model=d, n_layer=n, vocab_size=vocab)),
        "Transformer++": Transformer(
            TransformerConfig(d_model=d, n_layer=max(1, n // 2), n_head=max(1, d // 64), vocab_size=vocab)
        ),
    }
    times = {(name, length): [] for name in models for length in lengths}
    gen = torch.Generator().manual_seed(0)
    inputs = {length: torch.randint(0, vocab, (args.batch, length), generator=gen) for length in lengths}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first round warms up
            for length in lengths:
                for name, model in models.items():
                    start = time.perf_counter()
                    model.eval()(inputs[length])
                    if repeat:
                        times[name, length].append(time.perf_counter() - start)

    print(
        f"d_model={d}, Mamba {n} layers, Transformer++ {max(1, n // 2)} layers, vocab={vocab}, "
        f"B={args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print("| model | parameters | L | forward ms | per token vs L=" + str(lengths[0]) + " |")
    print("|---|---:|---:|---:|---:|")
    for name, model in models.items():
        first = statistics.median(times[name, lengths[0]]) / lengths[0]
        for length in lengths:
            ms = statistics.median(times[name, length])
            params = model.num_parameters() / 1e6
            print(f"| {name} | {params:.2f}M | {length} | {ms * 1e3:.1f} | {ms / length / first:.2f}x |")


if __name__ == "__main__":
    main()
