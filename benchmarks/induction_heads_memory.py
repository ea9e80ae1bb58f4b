"""Why a Mamba trained on induction heads stops recalling far past its training length.

Trains one model (seqarena.synthetic.fit, the pipeline's recipe), then separates the causes the
paper's Table 11 contrast could have: the distance between the special token and the query, the
total length, the recurrent path's numerical precision (float32 against float64), and how fast each
layer's state forgets on noise tokens (the half-life exp(-delta |A|) gives, per channel).

    python benchmarks/induction_heads_memory.py                        # the default config's setup
    python benchmarks/induction_heads_memory.py --length 256 --batch 8 --steps 3000 \
        --warmup 0 --min-lr-ratio 1                                    # the paper's length and recipe
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F

from seqarena.synthetic import IGNORE, SyntheticConfig, fit, induction_heads, scored_logits


def at_distance(length: int, distance: int, n: int, vocab: int, gen: torch.Generator):
    """Induction-heads sequences with the special token ``distance`` tokens before the query (last)."""
    seq = torch.randint(1, vocab - 1, (n, length), generator=gen)
    seq[:, length - 2 - distance] = seq[:, -1] = vocab - 1
    labels = torch.full_like(seq, IGNORE)
    labels[:, -1] = seq[:, length - 1 - distance]
    return seq, labels


def accuracy(model, seq, labels, vocab: int) -> float:
    predicted = scored_logits(model, seq, labels)[:, :vocab].argmax(-1)
    return (predicted == labels[labels != IGNORE]).float().mean().item()


@torch.no_grad()
def state_half_lives(model, seq) -> list[list[float]]:
    """Per layer, the 50/90/99/100% quantiles over channels of the slowest state's half-life (steps)
    on these tokens: log 2 / (mean delta * min |A|)."""
    out, hidden, residual = [], model.backbone.embedding(seq), None
    for layer in model.backbone.layers:
        normed, _ = layer._add_norm(layer.norm, hidden, residual)
        mixer, length = layer.mixer, seq.shape[1]
        x = (normed @ mixer.in_proj.weight.T).chunk(2, -1)[0].transpose(1, 2)
        x = F.silu(
            F.conv1d(
                x, mixer.conv1d.weight, mixer.conv1d.bias, padding=mixer.d_conv - 1, groups=mixer.d_inner
            )[..., :length]
        )
        delta, *_ = mixer._ssm_inputs(x)
        delta = F.softplus(delta + mixer.dt_proj.bias[:, None])
        half_life = math.log(2) / (delta.mean(dim=(0, 2)) * torch.exp(mixer.A_log).min(dim=1).values)
        out.append(torch.quantile(half_life, torch.tensor([0.5, 0.9, 0.99, 1.0])).tolist())
        hidden, residual = layer(hidden, residual)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--test-length", type=int, default=4096)
    parser.add_argument("--sequences", type=int, default=64)
    args = parser.parse_args()
    cfg = SyntheticConfig(
        task="induction_heads",
        arch="mamba",
        length=args.length,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio,
    )
    start = time.perf_counter()
    model, curve = fit(cfg)
    model.eval()
    print(
        f"trained at length {cfg.length}, {cfg.steps} steps in {time.perf_counter() - start:.0f} s; "
        f"final training loss {curve[-1]['loss']:.3f}, accuracy {curve[-1]['accuracy']:.3f}"
    )
    gen, n, vocab = torch.Generator().manual_seed(5), args.sequences, cfg.vocab
    print(f"\n| distance special -> query (total length {args.test_length}) | accuracy |\n|---|---|")
    for distance in (
        4,
        16,
        cfg.length - 4,
        2 * cfg.length,
        8 * cfg.length,
        32 * cfg.length,
        args.test_length - 96,
    ):
        if 0 < distance < args.test_length - 2:
            batch = at_distance(args.test_length, distance, n, vocab, gen)
            print(f"| {distance} | {accuracy(model, *batch, vocab):.3f} |")
    print("\n| total length (distance 16) | accuracy |\n|---|---|")
    for length in (4 * cfg.length, 16 * cfg.length, args.test_length):
        print(f"| {length} | {accuracy(model, *at_distance(length, 16, n, vocab, gen), vocab):.3f} |")
    seq, labels = induction_heads(n, 32 * cfg.length, vocab, torch.Generator().manual_seed(7))
    single = accuracy(model, seq, labels, vocab)
    double = accuracy(model.double(), seq, labels, vocab)
    model.float()
    print(f"\nuniform positions at length {32 * cfg.length}: float32 {single:.3f}, float64 {double:.3f}")
    print("\n| layer | state half-life on noise tokens (steps), channels' 50/90/99/100% |\n|---|---|")
    noise = torch.randint(1, vocab - 1, (8, 256), generator=gen)
    for i, quantiles in enumerate(state_half_lives(model, noise)):
        print(f"| {i} | {' / '.join(f'{q:.0f}' for q in quantiles)} |")


if __name__ == "__main__":
    main()
