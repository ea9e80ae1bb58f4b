"""Peak memory of the data stage at 1x and 10x the corpus: download + tokenize must be flat.

Generates Pile-format shards (jsonl.zst, {"text", "meta"}) of about --mb megabytes of text per
1x, then runs download and tokenize (GPT-NeoX tokenizer) in a fresh process per scale and
reads its peak resident set from the kernel (wait4's ru_maxrss). Prints one table.

    python benchmarks/tokenize_memory.py --tokenizer ../shared/data/20B_tokenizer.json --mb 20
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

RUN = """
import sys
from pathlib import Path
from seqarena.data import Source, download, tokenize
folder = Path(sys.argv[1])
raw = download(Source(kind="local", path=str(folder / "pile"), format="jsonl"), folder / "raw")
meta = tokenize(raw, folder / "out", "hf", tokenizer_name=sys.argv[2])
print(meta["train_tokens"] + meta["val_tokens"])
"""


def write_shards(folder: Path, megabytes: int, seed: int) -> int:
    """Shards of about 10 MB of text each; returns the characters written."""
    rng = random.Random(seed)
    words = "the pile has many sources of text and every one of them is a document of its own".split()
    folder.mkdir(parents=True)
    chars, shard = 0, 0
    while chars < megabytes * 1_000_000:
        lines = []
        for _ in range(5000):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(50, 700)))
            lines.append(json.dumps({"text": text, "meta": {"pile_set_name": "Pile-CC"}}))
            chars += len(text)
        (folder / f"{shard:03d}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode())
        )
        shard += 1
    return chars


def measure(folder: Path, tokenizer: str) -> tuple[int, float, int]:
    """(peak RSS bytes, seconds, tokens) of download + tokenize in a fresh process."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", RUN, str(folder), tokenizer],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"download + tokenize failed in {folder}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start, int(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="a tokenizer.json (GPT-NeoX's)")
    parser.add_argument("--mb", type=int, default=20, help="megabytes of text at 1x")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            folder = Path(tmp) / f"x{scale}"
            chars = write_shards(folder / "pile", args.mb * scale, seed=scale)
            rss, seconds, tokens = measure(folder, args.tokenizer)
            rows.append((scale, chars, tokens, rss, seconds))
    print(f"{'scale':>5} {'text MB':>8} {'tokens':>12} {'peak RSS MB':>12} {'RSS / 1x':>9} {'seconds':>8}")
    for scale, chars, tokens, rss, seconds in rows:
        print(
            f"{scale:>4}x {chars / 1e6:>8.0f} {tokens:>12,} {rss / 1e6:>12.0f} {rss / rows[0][3]:>9.2f} "
            f"{seconds:>8.0f}"
        )


if __name__ == "__main__":
    main()
