"""The tokens a run trains on, and its batches: random windows for training, fixed ones for validation.

The windows of a step are a pure function of (seed, step, micro-batch index), so a resumed or
re-sharded run sees exactly the batches an uninterrupted one would.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqarena.data import load_tokens


@dataclass
class TokenData:
    """Train and validation tokens, and what the run records about them."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    name: str  # for tags: the data folder's name
    sha256: dict | None = None  # the token files' digests (meta.json): part of the run's fingerprint
    tokenizer: Path | None = None  # tokenizer.json, copied beside the trained weights

    @classmethod
    def from_folder(cls, folder: str | Path, verify: bool = False) -> "TokenData":
        """A tokenized folder (train.bin, val.bin, meta.json; ``seqarena data tokenize``'s)."""
        folder = Path(folder)
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{meta_file} not found: tokenize the data first (seqarena data tokenize)"
            )
        meta = json.loads(meta_file.read_text())
        tokenizer = folder / "tokenizer.json"
        return cls(
            train=load_tokens(folder, "train", verify),
            val=load_tokens(folder, "val", verify),
            vocab_size=meta["vocab_size"],
            name=folder.name,
            sha256=meta.get("sha256"),
            tokenizer=tokenizer if tokenizer.is_file() else None,
        )

    @classmethod
    def random(cls, vocab_size: int, train_tokens: int, val_tokens: int, seed: int = 0) -> "TokenData":
        """Uniform random tokens: what a throughput benchmark trains on."""
        dtype = np.uint16 if vocab_size <= 65536 else np.uint32
        rng = np.random.default_rng(seed)
        train = rng.integers(0, vocab_size, train_tokens, dtype=dtype)
        val = rng.integers(0, vocab_size, val_tokens, dtype=dtype)
        return cls(train, val, vocab_size, name="random")

    def check_fits(self, seq_len: int) -> None:
        if len(self.train) < seq_len + 2:
            raise ValueError(
                f"data {self.name}: the train split has {len(self.train)} tokens, "
                f"too few for seq_len {seq_len}"
            )


def windows(tokens: np.ndarray, seed: int, step: int, index: int, batch: int, seq_len: int):
    """Micro-batch `index` of step `step`: `batch` random windows, (inputs, targets)."""
    g = torch.Generator().manual_seed(hash((seed, step, index)) & 0x7FFF_FFFF_FFFF_FFFF)
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=g).tolist()
    chunk = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]


def val_windows(tokens: np.ndarray, count: int, seq_len: int):
    """Fixed, evenly spaced validation windows."""
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"the validation split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    starts = np.linspace(0, len(tokens) - seq_len - 1, count).astype(np.int64)
    chunk = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]
