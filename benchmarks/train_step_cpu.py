"""One training step (forward, backward, AdamW) on the CPU, side by side, in tokens/s.

    python benchmarks/train_step_cpu.py             # d_model 256, 4 Mamba layers, vocab 4096, B=8, L=256
    python benchmarks/train_step_cpu.py --rows mamba,transformer --threads 1,2 --lengths 512,1024,2048

With several ``--threads`` or ``--lengths``, one table per setting, then the scaling table: each
setting's ms per step and, per token, relative to the first length (1.00 is linear in L).

Rows: seqarena's Mamba with each CPU scan backend; seqarena's Mamba-2 at the same width and
depth (about the same parameters; the CPU sizes' d_state 32 and headdim 32, one row per chunk
size of ``--mamba2-chunks``); seqarena's Mamba-3 at the same shape (SISO at chunk 32, as the CPU
sizes; MIMO at rank 4 and chunk 8); Hugging Face ``transformers``' ``MambaForCausalLM`` at the same shape with
mambapy's parallel scan (``use_mambapy=True``, its CPU training path) if transformers and
mambapy are installed; seqarena's Transformer++ at the same width with the layer count that
matches the Mamba's parameter count (the paper's pairing: two Mamba blocks per attention+MLP
block).
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from seqarena.models import Mamba, MambaConfig, Transformer, TransformerConfig
from seqarena.ops import BACKEND_ENV_VAR


class Trainee:
    """One model with its optimizer and fixed batch; ``step()`` times one training step."""

    def __init__(self, model, forward, backend, batch, length, vocab):
        self.model, self.forward, self.backend = model.train(), forward, backend
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.ids = torch.randint(0, vocab, (batch, length + 1), generator=torch.Generator().manual_seed(0))
        self.times = []

    def step(self):
        os.environ.pop(BACKEND_ENV_VAR, None)
        if self.backend:
            os.environ[BACKEND_ENV_VAR] = self.backend
        start = time.perf_counter()
        logits = self.forward(self.model, self.ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), self.ids[:, 1:].flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.times.append(time.perf_counter() - start)


ROWS = ["mamba", "mamba-torch", "mamba2", "mamba3", "mamba3-mimo", "hf-mambapy", "transformer"]


def ours(model, ids):
    return model(ids)


def hf(model, ids):
    return model(input_ids=ids).logits


def hf_mamba(d_model, n_layer, vocab):
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    config = HFMambaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        state_size=16,
        expand=2,
        conv_kernel=4,
        use_mambapy=True,
    )
    return MambaForCausalLM(config).train()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4, help="Mamba layers (the Transformer gets half)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", default="256", help="sequence lengths, one table each")
    parser.add_argument(
        "--threads", default=str(torch.get_num_threads()), help="thread counts, one table each"
    )
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {','.join(ROWS)}")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mamba2-state", type=int, default=32, help="Mamba-2's d_state")
    parser.add_argument("--mamba2-headdim", type=int, default=32)
    parser.add_argument("--mamba2-chunks", default="32,64", help="one Mamba-2 row per chunk size")
    args = parser.parse_args()
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; known: {','.join(ROWS)}")
    scaling = []
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for length in map(int, args.lengths.split(",")):
            scaling.append((threads, length, measure(args, length)))
    if len(scaling) > 1:
        print(
            "\n| threads | L | Mamba (cpp) ms | Transformer++ ms | Mamba tokens/s vs Transformer++ "
            "| Mamba per token (vs first L) | Transformer++ per token (vs first L) |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        first = {}
        for threads, length, times in scaling:
            m, t = times.get("mamba"), times.get("transformer")
            base = first.setdefault(threads, (length, m, t))

            def per_token(ms, ms0, length=length, base=base):
                return f"{ms / length / (ms0 / base[0]):.2f}x" if ms and ms0 else "-"

            ratio = f"{t / m:.2f}x" if m and t else "-"
            m_ms, t_ms = (f"{ms:.0f}" if ms else "-" for ms in (m, t))
            print(
                f"| {threads} | {length} | {m_ms} | {t_ms} | {ratio} "
                f"| {per_token(m, base[1])} | {per_token(t, base[2])} |"
            )


def measure(args, L) -> dict:
    """One setting's table; returns {row key: ms per step} for the scaling table."""
    d, n, vocab, b = args.d_model, args.n_layer, args.vocab, args.batch
    wanted = args.rows.split(",")
    mamba_config = MambaConfig(d_model=d, n_layer=n, vocab_size=vocab)

    def mamba2(chunk, layer="Mamba2", **ssm):
        ssm |= dict(layer=layer, d_state=args.mamba2_state, headdim=args.mamba2_headdim, chunk_size=chunk)
        return lambda: Mamba(MambaConfig(d_model=d, n_layer=n, vocab_size=vocab, ssm_cfg=ssm))

    transformer_config = TransformerConfig(
        d_model=d, n_layer=max(1, n // 2), n_head=max(1, d // 64), vocab_size=vocab
    )
    rows = [  # (key, name, build, forward, scan backend)
        ("mamba", "seqarena Mamba (cpp kernels)", lambda: Mamba(mamba_config), ours, "cpp"),
        ("mamba-torch", "seqarena Mamba (torch kernels)", lambda: Mamba(mamba_config), ours, "torch"),
        *(
            (
                "mamba2",
                f"seqarena Mamba-2 (SSD, N={args.mamba2_state}, chunk {chunk})",
                mamba2(int(chunk)),
                ours,
                "cpp",
            )
            for chunk in args.mamba2_chunks.split(",")
        ),
        ("mamba3", "seqarena Mamba-3 SISO (chunk 32)", mamba2(32, "Mamba3"), ours, "cpp"),
        (
            "mamba3-mimo",
            "seqarena Mamba-3 MIMO (rank 4, chunk 8)",
            mamba2(8, "Mamba3", is_mimo=True, mimo_rank=4),
            ours,
            "cpp",
        ),
    ]
    if "hf-mambapy" in wanted:
        try:
            import mambapy  # noqa: F401
            import transformers  # noqa: F401

            rows.append(
                (
                    "hf-mambapy",
                    "transformers MambaForCausalLM + mambapy",
                    lambda: hf_mamba(d, n, vocab),
                    hf,
                    None,
                )
            )
        except ImportError as e:
            print(f"transformers+mambapy row left out ({e}); pip install transformers mambapy")
    rows.append(
        ("transformer", "seqarena Transformer++", lambda: Transformer(transformer_config), ours, None)
    )
    rows = [row for row in rows if row[0] in wanted]

    print(
        f"\nd_model={d}, Mamba {n} layers, Transformer++ {transformer_config.n_layer} layers, "
        f"vocab={vocab}, "
        f"B={b}, L={L}, {torch.get_num_threads()} threads, "
        f"median of {args.steps} steps taken in turn\n"
    )
    trainees = []
    for key, name, build, forward, backend in rows:
        torch.manual_seed(0)
        trainees.append((key, name, Trainee(build(), forward, backend, b, L, vocab)))
    for _ in range(args.steps + 2):  # round-robin: machine noise hits every row alike
        for _key, _name, trainee in trainees:
            trainee.step()
    results = [
        (key, name, t.model.num_parameters(), statistics.median(t.times[2:])) for key, name, t in trainees
    ]

    ours_tps = b * L / results[0][3]
    print(f"| model | parameters | ms/step | tokens/s | time vs {results[0][1]} |")
    print("|---|---:|---:|---:|---:|")
    for _key, name, params, seconds in results:
        tps = b * L / seconds
        print(f"| {name} | {params / 1e6:.2f}M | {seconds * 1e3:.0f} | {tps:.0f} | {ours_tps / tps:.2f}x |")
    return {key: seconds * 1e3 for key, _name, _params, seconds in results if key in ("mamba", "transformer")}


if __name__ == "__main__":
    main()
