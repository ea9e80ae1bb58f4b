"""Data stage: read a corpus with HF ``datasets``, build a tokenizer, write token memmaps.

Both steps stream, so a corpus of any size (the Pile) runs in constant memory.
``download`` reads the source lazily (a hub dataset, streamed or downloaded; local text,
jsonl, jsonl.zst or parquet files one by one) and writes each split's text column to
``results/data/{dataset}/raw/{split}.parquet`` in row groups, with ``source.json`` saying
where it came from. ``tokenize`` trains or loads the tokenizer, holds out a validation split
if the source has none, and encodes batches of documents straight into ``train.bin`` and
``val.bin`` (flat token ids, documents separated by EOS) up to a token budget, then writes
``meta.json``. Tokenizing works in shards of records, encoded by parallel processes into a
folder that a killed run resumes from. Every file is written whole, then renamed. Same inputs
give byte-identical files, whatever the shards and processes.
"""

import contextlib
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import shutil
import sysconfig
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqarena.files import atomic_write
from seqarena.options import narrowed, option

EOS = "<|endoftext|>"
LOCAL_FORMATS = {"text": "text", "jsonl": "json", "json": "json", "parquet": "parquet"}
VALIDATION_SPLITS = ("validation", "valid", "val")  # never "test": that split stays unseen
BATCH = 1000  # records per read, encode and write
SAMPLE_BY = ["line", "paragraph", "document"]
SOURCE_KINDS = ["hf", "local", "embedded", "python_stdlib"]
TOKENIZERS = ["bpe", "hf", "byte"]


@dataclass
class Source:
    """Where a corpus comes from: a hub dataset (``hf``), local files (``local``), a file the
    package ships (``embedded``: seqarena.embedded, checked against its checksum) or the Python
    standard library's own sources (``python_stdlib``: a code corpus every Python install has)."""

    kind: str = option(help="hf, local, embedded or python_stdlib", choices=SOURCE_KINDS)
    path: str = option(
        "", help="hub id (Salesforce/wikitext), a file, glob or folder, or a shipped file's name"
    )
    name: str | None = option(None, help="hub config, e.g. wikitext-2-raw-v1")
    format: str = option(
        "text", help="local: text, jsonl (also .jsonl.zst, the Pile's shards), json, parquet"
    )
    text_field: str = "text"
    sample_by: str = option(
        "paragraph", help="local text: a record per line, paragraph or document", choices=SAMPLE_BY
    )
    streaming: bool = option(False, help="hub: stream instead of downloading everything first")
    max_chars: int | None = option(
        None, help="stop reading train after this many characters (other splits: a tenth)"
    )
    document_start: str | None = option(
        None, help="a regex: rows are lines, and a matching row starts a document"
    )

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data source kind must be one of {SOURCE_KINDS}, not {self.kind!r}")
        if self.kind == "python_stdlib" and self.path:
            raise ValueError(f"data source kind python_stdlib takes no path (it reads {stdlib_root()})")
        if self.kind != "python_stdlib" and not self.path:
            raise ValueError(f"data source kind {self.kind} needs a path")
        if self.kind != "hf" and self.format not in LOCAL_FORMATS:
            raise ValueError(f"local data format must be one of {sorted(LOCAL_FORMATS)}, not {self.format!r}")
        if self.document_start is not None:
            try:
                re.compile(self.document_start)
            except re.error as e:
                raise ValueError(f"data source document_start {self.document_start!r}: {e}") from None


def _local_files(pattern: str) -> list[str]:
    """The files of a local source (a file, a glob or a folder), all present and not all empty."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file())
    else:
        files = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"local data source {pattern!r}: no such file(s): {missing or pattern}")
    if all(Path(f).stat().st_size == 0 for f in files):
        raise ValueError(f"local data source {pattern!r} has no training records: {files} are empty")
    return files


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_stdlib_files() -> list[Path]:
    """The ``.py`` files of the running Python's standard library, its installed packages aside,
    in path order (the last ones become the held-out validation records)."""
    root = stdlib_root()
    installed = {"site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if not installed & set(p.relative_to(root).parts))


def _python_stdlib_splits() -> dict[str, Iterator[list[str]]]:
    """One split, train: a record per source file. A few of the library's own test files are not
    UTF-8 on purpose (they test source encodings); their undecodable bytes become U+FFFD."""
    import datasets

    files = [str(p) for p in python_stdlib_files()]

    def open_batches():
        stream = datasets.load_dataset(
            "text",
            data_files={"train": files},
            sample_by="document",
            encoding_errors="replace",
            streaming=True,
        )["train"]
        return stream.iter(batch_size=BATCH)

    return {"train": _text_batches(open_batches, "text", f"the Python standard library at {stdlib_root()}")}


def _text_batches(open_batches, field: str, where: str) -> Iterator[list[str]]:
    """The text column of each batch of records from ``open_batches()``; a file that cannot be read
    (truncated, corrupt: it surfaces while opening or mid-read) or lacks the field is named."""

    def batches():
        try:
            yield from open_batches()
        except Exception as e:
            raise ValueError(f"{where} cannot be read ({type(e).__name__}: {e})") from e

    for batch in batches():
        if field not in batch:
            raise ValueError(f"{where} has no text field {field!r}; its fields: {sorted(batch)}")
        yield batch[field]


def _local_splits(source: Source) -> dict[str, Iterator[list[str]]]:
    """One split, train: each file read lazily by ``datasets`` in turn (so an error names it)."""
    import datasets

    if source.kind == "embedded":
        from seqarena import embedded

        files = [str(embedded.path(source.path))]
    else:
        files = [f for f in _local_files(source.path) if Path(f).stat().st_size]
    kwargs = {"sample_by": source.sample_by} if source.format == "text" else {}

    def batches(file: str) -> Iterator[list[str]]:
        def open_batches():
            stream = datasets.load_dataset(
                LOCAL_FORMATS[source.format], data_files={"train": [file]}, streaming=True, **kwargs
            )["train"]
            return stream.iter(batch_size=BATCH)

        return _text_batches(open_batches, source.text_field, f"local data file {file}")

    for file in files:  # each file's first records before any work: a wrong field fails at once
        next(batches(file), None)

    def train() -> Iterator[list[str]]:
        for file in files:
            yield from batches(file)

    return {"train": train()}


def _hub_splits(source: Source) -> dict[str, Iterator[list[str]]]:
    import datasets

    try:
        loaded = datasets.load_dataset(source.path, source.name, streaming=source.streaming)
    except Exception as e:
        raise RuntimeError(
            f"could not fetch dataset {source.path!r} (config {source.name!r}): {type(e).__name__}: {e}. "
            "Offline? Point the config's data source at local files instead: "
            "kind: local, path: 'corpus/*.txt' (or .jsonl/.jsonl.zst/.parquet with text_field)."
        ) from e
    where = f"dataset {source.path!r}"
    return {
        split: _text_batches(lambda ds=ds: ds.iter(batch_size=BATCH), source.text_field, f"{where} ({split})")
        for split, ds in loaded.items()
    }


def _documents(batches: Iterable[list[str]], document_start: str | None) -> Iterator[str]:
    """Records as documents; with ``document_start``, consecutive rows joined into one document
    that ends where the next matching row begins (WikiText's rows are lines, its articles
    start at a " = Title = " row)."""
    if document_start is None:
        for batch in batches:
            yield from batch
        return
    start, lines = re.compile(document_start), []
    for batch in batches:
        for row in batch:
            if start.match(row) and any(line.strip() for line in lines):
                yield "\n".join(lines)
                lines = []
            lines.append(row.rstrip("\n"))
    if any(line.strip() for line in lines):
        yield "\n".join(lines)


def _write_split(documents: Iterable[str], path: Path, max_chars: int | None, desc: str) -> int:
    """Documents into a parquet file of row groups, up to max_chars; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, rows, chars, batch = pa.schema([("text", pa.string())]), 0, 0, []
    with pq.ParquetWriter(path, schema) as writer, tqdm(desc=desc, unit=" docs", mininterval=30) as bar:

        def flush():
            nonlocal rows, batch
            if batch:
                writer.write_table(pa.table({"text": batch}, schema=schema))
                bar.update(len(batch))
                rows, batch = rows + len(batch), []

        for document in documents:
            batch.append(document)
            chars += len(document)
            if max_chars and chars >= max_chars:
                break
            if len(batch) == BATCH:
                flush()
        flush()
    return rows


def _provenance(source: Source) -> dict:
    """What a source's config alone does not pin: which Python's library was read (a file a record)."""
    if source.kind != "python_stdlib":
        return {}
    root, files = stdlib_root(), python_stdlib_files()
    return {
        "sample_by": "document",
        "python": platform.python_version(),
        "stdlib": str(root),
        "files": len(files),
    }


def download(source: Source, raw_dir: Path) -> Path:
    """Read the source and write raw_dir/{split}.parquet and source.json (all under a temporary
    folder renamed into place: a failure mid-read leaves nothing behind)."""
    raw_dir = Path(raw_dir)
    if source.kind == "hf":
        splits = _hub_splits(source)
    elif source.kind == "python_stdlib":
        splits = _python_stdlib_splits()
    else:
        splits = _local_splits(source)
    if "train" not in splits:
        raise ValueError(f"data source {source.path!r} has no train split; its splits: {sorted(splits)}")
    tmp = raw_dir.with_name(raw_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for split, batches in splits.items():
            budget = source.max_chars and (source.max_chars if split == "train" else source.max_chars // 10)
            documents = _documents(batches, source.document_start)
            rows = _write_split(documents, tmp / f"{split}.parquet", budget, f"reading {split}")
            if split == "train" and rows == 0:
                raise ValueError(f"data source {source.path!r} has no training records")
        (tmp / "source.json").write_text(json.dumps(asdict(source) | _provenance(source), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    tmp.rename(raw_dir)
    return raw_dir


@dataclass(kw_only=True)
class DownloadConfig(Source):
    out: str = option(help="the raw/ folder to write")


def download_command(cfg: DownloadConfig) -> None:
    """Fetch a corpus (HF hub or local files) into a raw/ folder."""
    print(f"downloaded to {download(narrowed(cfg, Source), Path(cfg.out))}")


# --- tokenizers ----------------------------------------------------------------------------


def byte_tokenizer():
    """256 byte symbols (id = byte value) and EOS (256): no training, any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: byte for byte, symbol in enumerate(_byte_level_symbols())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def _byte_level_symbols() -> list[str]:
    """The printable character that byte-level tokenizers use for byte 0, 1, ..., 255 (GPT-2's map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols, unprintable = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + unprintable))
            unprintable += 1
    return symbols


def train_bpe(texts, vocab_size: int):
    """Byte-level BPE trained on texts; EOS is id 0. Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_hf_tokenizer(name_or_path: str):
    """A tokenizer.json file or folder, or a hub id such as EleutherAI/gpt-neox-20b."""
    from tokenizers import Tokenizer

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    try:
        return Tokenizer.from_pretrained(name_or_path)
    except Exception as e:
        raise RuntimeError(
            f"could not load tokenizer {name_or_path!r}: no such file, and the hub said "
            f"{type(e).__name__}: {e}. Offline? Give the path of a tokenizer.json."
        ) from e


def build_tokenizer(kind: str, train_texts=None, vocab_size: int | None = None, name: str | None = None):
    if kind == "byte":
        return byte_tokenizer()
    if kind == "bpe":
        if not vocab_size:
            raise ValueError("tokenizer kind 'bpe' needs vocab_size")
        return train_bpe(train_texts, vocab_size)
    if kind == "hf":
        if not name:
            raise ValueError("tokenizer kind 'hf' needs a name (hub id or tokenizer.json path)")
        return load_hf_tokenizer(name)
    raise ValueError(f"tokenizer kind must be 'bpe', 'hf' or 'byte', not {kind!r}")


def eos_id(tokenizer) -> int:
    token_id = tokenizer.token_to_id(EOS)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {EOS} token to separate documents")
    return token_id


# --- token memmaps -------------------------------------------------------------------------

SHARD_DOCUMENTS = 100_000  # raw records per shard: the unit of parallel work and of resume
SHARDS = "shards.partial"  # beside the outputs while tokenizing; removed once meta.json is written


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def _write_tokens(tokenizer, batches: Iterable[list[str]], path: Path, dtype) -> tuple[int, int]:
    """Encode batches of documents, EOS after each, straight into the file; returns (tokens,
    documents) written."""
    eos, tokens, documents = eos_id(tokenizer), 0, 0

    def write(tmp):
        nonlocal tokens, documents
        with open(tmp, "wb") as f:
            for batch in batches:
                ids = [e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
                ends = np.cumsum([len(doc) + 1 for doc in ids])  # each document's EOS position + 1
                flat = np.full(ends[-1], eos, dtype=dtype)  # EOS stays after each document
                text = np.ones(flat.size, dtype=bool)
                text[ends - 1] = False
                flat[text] = np.fromiter(
                    itertools.chain.from_iterable(ids), dtype=dtype, count=int(text.sum())
                )
                flat.tofile(f)
                tokens, documents = tokens + flat.size, documents + len(ends)

    atomic_write(path, write)
    return tokens, documents


def _raw_texts(path: Path, rows: range) -> Iterator[list[str]]:
    """Batches of the non-empty texts of rows ``rows`` of a raw split; only the row groups that hold
    them are read, and rows outside the range never become Python strings."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    groups, first, start = [], 0, None
    for group in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        if first < rows.stop and first + size > rows.start:
            groups.append(group)
            start = first if start is None else start
        first += size
    end = start or 0
    for batch in file.iter_batches(batch_size=BATCH, columns=["text"], row_groups=groups):
        first, end = end, end + batch.num_rows
        lo = max(rows.start - first, 0)
        batch = batch.slice(lo, min(rows.stop, end) - first - lo)
        keep = [t for t in batch.column(0).to_pylist() if t and t.strip()]
        if keep:
            yield keep


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _train_and_validation(raw_dir: Path, val_fraction: float) -> tuple[dict, str]:
    """{"train": (file, rows), "val": (file, rows)} and how validation was chosen: the source's
    validation split, else the last ``val_fraction`` of the train records (a ``test`` split is
    never used)."""
    import pyarrow.parquet as pq

    def records(file: Path) -> int:
        return pq.ParquetFile(file).metadata.num_rows

    splits = sorted(p.stem for p in raw_dir.glob("*.parquet"))
    val_split = next((s for s in VALIDATION_SPLITS if s in splits), None)
    train_file = raw_dir / "train.parquet"
    if val_split:
        val_file = raw_dir / f"{val_split}.parquet"
        parts = {
            "train": (train_file, range(records(train_file))),
            "val": (val_file, range(records(val_file))),
        }
        validation = f"the source's {val_split} split"
    else:  # hold out the last fraction of records, as nanoGPT splits Shakespeare
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
        total = records(train_file)
        cut = total - max(1, round(total * val_fraction))
        parts = {"train": (train_file, range(0, cut)), "val": (train_file, range(cut, total))}
        validation = f"last {val_fraction:.0%} of train records"
    if "test" in splits:
        validation += " (the source's test split is left unused)"
    return parts, validation


@dataclass(frozen=True)
class Shard:
    """Rows of one raw split, encoded on their own into ``{split}-{index}.bin`` of the shards folder."""

    split: str
    index: int
    raw: Path
    rows: range

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


def _shards(parts: dict, shard_documents: int) -> list[Shard]:
    return [
        Shard(split, index, file, range(start, min(start + shard_documents, rows.stop)))
        for split, (file, rows) in parts.items()
        for index, start in enumerate(range(rows.start, rows.stop, shard_documents))
    ]


_encoder: dict = {}  # this process's tokenizer and dtype, for _encode_shard


def _start_encoder(tokenizer_json: str, dtype: str, folder: str, serial: bool) -> None:
    """Load the tokenizer once per process; a worker process encodes on one core (its siblings
    take the others), the only process on all of them."""
    from tokenizers import Tokenizer

    if serial:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _encoder.update(tokenizer=Tokenizer.from_str(tokenizer_json), dtype=np.dtype(dtype), folder=Path(folder))


def _encode_shard(shard: Shard) -> dict:
    """The shard's record ({tokens, documents}), encoding it unless a previous run finished it."""
    path = _encoder["folder"] / f"{shard.name}.bin"
    record_path = path.with_suffix(".json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if path.is_file() and path.stat().st_size == record["tokens"] * _encoder["dtype"].itemsize:
            return record | {"resumed": True}
    tokens, documents = _write_tokens(
        _encoder["tokenizer"], _raw_texts(shard.raw, shard.rows), path, _encoder["dtype"]
    )
    record = {"tokens": tokens, "documents": documents}
    atomic_write(record_path, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))
    return record


def _encoded(shards: list[Shard], workers: int, start: tuple) -> Iterator[dict]:
    """Each shard's record, in order; with ``workers`` > 1 that many shards are encoded at once in
    spawned processes, and closing the generator cancels those not started."""
    if workers == 1:
        _start_encoder(*start, serial=False)
        yield from map(_encode_shard, shards)
        return
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=_start_encoder, initargs=(*start, True))
    try:
        jobs = iter(shards)
        pending = deque(pool.submit(_encode_shard, shard) for shard in itertools.islice(jobs, workers))
        while pending:
            record = pending.popleft().result()
            pending.extend(pool.submit(_encode_shard, shard) for shard in itertools.islice(jobs, 1))
            yield record
    finally:
        pool.shutdown(cancel_futures=True)


def _join(folder: Path, shards: list[tuple[Shard, dict]], path: Path, dtype, eos: int, max_tokens):
    """The shards' tokens, in order, into one file, the last cut at ``max_tokens``; returns (tokens,
    documents, sha256), the digest taken as the bytes go out."""
    digest, tokens, documents = hashlib.sha256(), 0, 0
    itemsize = np.dtype(dtype).itemsize

    def write(tmp):
        nonlocal tokens, documents
        with open(tmp, "wb") as out:
            for shard, record in shards:
                take = record["tokens"] if max_tokens is None else min(record["tokens"], max_tokens - tokens)
                source = folder / f"{shard.name}.bin"
                if take == record["tokens"]:
                    documents += record["documents"]
                elif take:  # documents touched by the cut: the EOS before its last token, plus one
                    kept = np.memmap(source, dtype=dtype, mode="r")[: take - 1]
                    documents += int(np.count_nonzero(kept == eos)) + 1
                with open(source, "rb") as f:
                    left = take * itemsize
                    while left:
                        block = f.read(min(left, 1 << 24))
                        digest.update(block)
                        out.write(block)
                        left -= len(block)
                tokens += take

    atomic_write(path, write)
    return tokens, documents, digest.hexdigest()


def _shards_folder(out_dir: Path, key: dict) -> Path:
    """The folder of encoded shards, kept from a previous run only when everything that made them
    (raw files, rows, tokenizer) is the same."""
    folder = out_dir / SHARDS
    key_file = folder / "key.json"
    if folder.exists() and (not key_file.is_file() or json.loads(key_file.read_text()) != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not key_file.is_file():
        atomic_write(key_file, lambda tmp: Path(tmp).write_text(json.dumps(key, indent=2) + "\n"))
    return folder


def tokenize(
    raw_dir: Path,
    out_dir: Path,
    tokenizer_kind: str,
    vocab_size: int | None = None,
    tokenizer_name: str | None = None,
    val_fraction: float = 0.05,
    max_tokens: int | None = None,
    workers: int = 1,
    shard_documents: int = SHARD_DOCUMENTS,
) -> dict:
    """raw/ -> tokenizer.json, train.bin, val.bin, meta.json (meta written last), in constant memory.

    Validation is the source's validation split, else the last ``val_fraction`` of the train
    records (a ``test`` split is never used); train stops at ``max_tokens`` tokens. The records are
    encoded in shards of ``shard_documents``, ``workers`` at once, into a shards folder that a
    killed run resumes from; the outputs do not depend on either."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / "source.json").is_file() or not (raw_dir / "train.parquet").is_file():
        raise FileNotFoundError(
            f"{raw_dir} is not a downloaded corpus (no source.json or train.parquet): run the download first"
        )
    for name, value in (
        ("max_tokens", max_tokens),
        ("workers", workers),
        ("shard_documents", shard_documents),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, not {value}")
    parts, validation = _train_and_validation(raw_dir, val_fraction)
    if any(next(_raw_texts(*part), None) is None for part in parts.values()):
        raise ValueError(f"{raw_dir}: the corpus has no non-empty text to tokenize in train or validation")

    tokenizer = build_tokenizer(tokenizer_kind, _raw_texts(*parts["train"]), vocab_size, tokenizer_name)
    vocab, eos = tokenizer.get_vocab_size(), eos_id(tokenizer)
    dtype = np.dtype(token_dtype(vocab))
    tokenizer_json = tokenizer.to_str()
    tokenizer_sha256 = hashlib.sha256(tokenizer_json.encode()).hexdigest()
    atomic_write(out_dir / "tokenizer.json", lambda tmp: Path(tmp).write_text(tokenizer_json))
    shards = _shards(parts, shard_documents)
    key = {
        "tokenizer_sha256": tokenizer_sha256,
        "dtype": dtype.name,
        "raw": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(raw_dir.glob("*"))},
        "shards": [[s.name, s.raw.name, s.rows.start, s.rows.stop] for s in shards],
    }
    folder = _shards_folder(out_dir, key)
    written = {}
    for split in parts:
        ordered = [s for s in shards if s.split == split]
        budget = max_tokens if split == "train" else None
        encoded, total = [], 0
        records = _encoded(ordered, workers, (tokenizer_json, dtype.name, str(folder)))
        bar = tqdm(desc=f"tokenizing {split}", unit=" tokens", unit_scale=True, mininterval=30)
        with contextlib.closing(records), bar:
            for shard, record in zip(ordered, records, strict=True):
                encoded.append((shard, record))
                total += record["tokens"]
                bar.update(record["tokens"])
                if budget and total >= budget:
                    break
        resumed = sum(bool(record.get("resumed")) for _, record in encoded)
        if resumed:
            print(f"{split}: {resumed} of {len(encoded)} shards kept from an earlier run ({folder})")
        written[split] = _join(folder, encoded, out_dir / f"{split}.bin", dtype, eos, budget)
    meta = {
        "train_tokens": written["train"][0],
        "val_tokens": written["val"][0],
        "train_documents": written["train"][1],
        "val_documents": written["val"][1],
        "max_tokens": max_tokens,
        "vocab_size": vocab,
        "eos_id": eos,
        "dtype": dtype.name,
        "tokenizer": {"kind": tokenizer_kind, "name": tokenizer_name, "requested_vocab_size": vocab_size},
        "tokenizer_sha256": tokenizer_sha256,
        "source": json.loads((raw_dir / "source.json").read_text()),
        "validation": validation,
        "sha256": {f"{split}.bin": written[split][2] for split in written},
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out_dir / "meta.json", lambda tmp: Path(tmp).write_text(text))
    shutil.rmtree(folder)
    return meta


@dataclass
class TokenizeConfig:
    raw: str = option(help="a downloaded raw/ folder")
    out: str = option(help="the folder to write")
    tokenizer: str = option(help="bpe: train one; hf: a hub id or tokenizer.json; byte", choices=TOKENIZERS)
    vocab_size: int | None = option(None, help="bpe: the vocabulary to train")
    tokenizer_name: str | None = option(None, help="hf: hub id or tokenizer.json path")
    val_fraction: float = option(0.05, help="held out when the source has no validation split")
    max_tokens: int | None = option(None, help="train tokens to write at most (later shards are not read)")
    workers: int = option(1, help="processes encoding shards at once (1: one process on every core)")
    shard_documents: int = option(
        SHARD_DOCUMENTS, help="records per shard, the unit a killed run resumes from"
    )


def tokenize_command(cfg: TokenizeConfig) -> None:
    """A tokenizer and train.bin, val.bin, meta.json from a raw/ folder."""
    meta = tokenize(
        Path(cfg.raw),
        Path(cfg.out),
        cfg.tokenizer,
        cfg.vocab_size,
        cfg.tokenizer_name,
        cfg.val_fraction,
        cfg.max_tokens,
        cfg.workers,
        cfg.shard_documents,
    )
    print(
        f"{cfg.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
        f"vocab {meta['vocab_size']}"
    )


def load_tokens(data_dir: Path, split: str, verify: bool = False) -> np.memmap:
    """train.bin or val.bin as a read-only memmap of the dtype that meta.json records. Its size must
    be what meta.json says (a cheap check, always); ``verify`` also compares its sha256."""
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    path = Path(data_dir) / f"{split}.bin"
    expected = meta[f"{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
    if path.stat().st_size != expected:
        raise ValueError(
            f"{path} has {path.stat().st_size} bytes, but meta.json records {meta[f'{split}_tokens']} "
            f"{meta['dtype']} tokens ({expected} bytes): it changed after tokenizing; tokenize again"
        )
    if verify and sha256_file(path) != meta["sha256"][path.name]:
        raise ValueError(
            f"{path}: its sha256 differs from meta.json's: it changed after tokenizing; tokenize again"
        )
    return np.memmap(path, dtype=meta["dtype"], mode="r")
