"""Tokenize's rate, in tokens/s, at one and more worker processes, side by side.

    python benchmarks/tokenize_rate.py --tokenizer ../shared/data/20B_tokenizer.json \
        --text ../shared/data/tinyshakespeare.txt --mb 50 --workers 1,2

Repeats the text file (English prose) to about --mb megabytes of paragraph documents, downloads
it once, then times ``tokenize`` (the GPT-NeoX tokenizer, as the paper config) into a fresh
folder at each worker count, taken in turn --repeats times (the fastest is kept). ``workers 1``
is one process whose tokenizer encodes each batch on every core (and, as ``1, one core``, on
one: TOKENIZERS_PARALLELISM=false); more workers are spawned processes that each encode on one.
Prints a table and the wall time that the slowest rate per process of more than one gives for
the paper's 60B tokens at --paper-workers processes.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from seqarena.data import Source, download, tokenize

PAPER_TOKENS = 60e9  # config/paper.yaml's data.pile.tokenizer.max_tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="a tokenizer.json (GPT-NeoX's)")
    parser.add_argument("--text", required=True, help="a text file of paragraphs (Tiny Shakespeare)")
    parser.add_argument("--mb", type=int, default=50, help="megabytes of text")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--shard-documents", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paper-workers", type=int, default=8, help="the paper config's tokenize threads")
    args = parser.parse_args()
    rows = [(int(w), "") for w in args.workers.split(",")]
    rows.insert(1, (1, ", one core"))
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(args.text).read_text()
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n\n".join([text] * max(1, round(args.mb * 1e6 / len(text)))))
        megabytes = corpus.stat().st_size / 1e6
        raw = download(Source(kind="local", path=str(corpus)), Path(tmp) / "raw")
        best, tokens = dict.fromkeys(rows, float("inf")), 0
        for repeat in range(args.repeats):
            for workers, cores in rows:
                os.environ["TOKENIZERS_PARALLELISM"] = "false" if cores else "true"
                start = time.perf_counter()
                out = Path(tmp) / f"out{workers}{cores}-{repeat}"
                options = {"workers": workers, "shard_documents": args.shard_documents}
                meta = tokenize(raw, out, "hf", tokenizer_name=args.tokenizer, **options)
                best[workers, cores] = min(best[workers, cores], time.perf_counter() - start)
                tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"{megabytes:.0f} MB of text, {tokens:,} tokens, fastest of {args.repeats}")
    print("| workers | seconds | tokens/s | tokens/s per process | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for (workers, cores), seconds in best.items():
        rate, speedup = tokens / seconds, best[rows[0]] / seconds
        print(f"| {workers}{cores} | {seconds:.1f} | {rate:,.0f} | {rate / workers:,.0f} | {speedup:.2f} |")
    per_process = min(tokens / best[w, c] / w for w, c in rows if w > 1 or c)
    hours = PAPER_TOKENS / (per_process * args.paper_workers) / 3600
    print(f"60B tokens at {args.paper_workers} processes of {per_process:,.0f} tokens/s: {hours:.1f} hours")


if __name__ == "__main__":
    main()
