"""Data stage: download a corpus with HF ``datasets``, build a tokenizer, write token memmaps.

``download`` saves a ``DatasetDict`` (its splits as the source has them) to
``results/data/{dataset}/raw/`` with ``source.json`` describing where it came from.
``tokenize`` trains or loads the tokenizer, holds out a validation split if the source has
none, and writes ``tokenizer.json``, ``train.bin``, ``val.bin`` (flat token ids, documents
separated by EOS) and ``meta.json``. Same inputs give byte-identical files.
"""

import glob
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seqarena.models.base import atomic_write

EOS = "<|endoftext|>"
LOCAL_FORMATS = {"text": "text", "jsonl": "json", "json": "json", "parquet": "parquet"}


@dataclass
class Source:
    """Where a corpus comes from: a hub dataset (``hf``) or local files (``local``)."""

    kind: str  # "hf" or "local"
    path: str  # hub id (Salesforce/wikitext) or a file, glob or folder
    name: str | None = None  # hub config, e.g. wikitext-2-raw-v1
    format: str = "text"  # local: text, jsonl, json, parquet
    text_field: str = "text"
    sample_by: str = "paragraph"  # local text: line, paragraph or document per record
    streaming: bool = False  # hub: stream instead of downloading everything
    max_chars: int | None = None  # with streaming: stop after this many characters of train text

    def __post_init__(self):
        if self.kind not in ("hf", "local"):
            raise ValueError(f"data source kind must be 'hf' or 'local', not {self.kind!r}")
        if self.kind == "local" and self.format not in LOCAL_FORMATS:
            raise ValueError(f"local data format must be one of {sorted(LOCAL_FORMATS)}, not {self.format!r}")
        if self.streaming and not self.max_chars:
            raise ValueError("streaming needs max_chars (the budget at which to stop reading)")


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


def load_source(source: Source):
    """The corpus as a ``datasets.DatasetDict`` with a ``text`` column, network allowing."""
    import datasets

    if source.kind == "local":
        files = _local_files(source.path)
        kwargs = {"sample_by": source.sample_by} if source.format == "text" else {}
        loaded = datasets.load_dataset(LOCAL_FORMATS[source.format], data_files={"train": files}, **kwargs)
    else:
        try:
            loaded = datasets.load_dataset(source.path, source.name, streaming=source.streaming)
        except Exception as e:
            raise RuntimeError(
                f"could not fetch dataset {source.path!r} (config {source.name!r}): {type(e).__name__}: {e}. "
                "Offline? Point the config's data source at local files instead: "
                "kind: local, path: 'corpus/*.txt' (or .jsonl/.parquet with text_field)."
            ) from e
        if source.streaming:
            loaded = _take_chars(loaded, source.text_field, source.max_chars)
    if source.text_field not in loaded["train"].column_names:
        raise ValueError(
            f"dataset {source.path!r} has no text field {source.text_field!r}; "
            f"its columns: {loaded['train'].column_names}"
        )
    keep = {split: ds.select_columns([source.text_field]) for split, ds in loaded.items()}
    if source.text_field != "text":
        keep = {split: ds.rename_column(source.text_field, "text") for split, ds in keep.items()}
    return datasets.DatasetDict(keep)


def _take_chars(streamed, field: str, max_chars: int):
    """Materialise a streamed dataset up to a character budget for train (a tenth for the rest)."""
    import datasets

    out = {}
    for split, stream in streamed.items():
        budget, texts = max_chars if split == "train" else max_chars // 10, []
        for record in tqdm(stream, desc=f"streaming {split}", unit=" docs"):
            texts.append(record[field])
            budget -= len(record[field])
            if budget <= 0:
                break
        out[split] = datasets.Dataset.from_dict({field: texts})
    return datasets.DatasetDict(out)


def download(source: Source, raw_dir: Path) -> Path:
    """Fetch the source and save it under raw_dir (written whole, then renamed into place)."""
    raw_dir = Path(raw_dir)
    corpus = load_source(source)
    if corpus["train"].num_rows == 0:
        raise ValueError(f"data source {source.path!r} has no training records")
    tmp = raw_dir.with_name(raw_dir.name + ".tmp")
    corpus.save_to_disk(str(tmp))
    (tmp / "source.json").write_text(json.dumps(asdict(source), indent=2) + "\n")
    if raw_dir.exists():
        import shutil

        shutil.rmtree(raw_dir)
    tmp.rename(raw_dir)
    return raw_dir


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


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def _write_tokens(tokenizer, texts, path: Path, dtype, desc: str, batch_docs: int = 1000) -> int:
    """Encode texts in batches (tokenizers encodes a batch on all cores), EOS after each."""
    eos, count = eos_id(tokenizer), 0

    def write(tmp):
        nonlocal count
        with open(tmp, "wb") as f, tqdm(total=len(texts), desc=desc, unit=" docs") as bar:
            for start in range(0, len(texts), batch_docs):
                batch = texts[start : start + batch_docs]
                ids = [e.ids + [eos] for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
                flat = np.fromiter((i for doc in ids for i in doc), dtype=dtype)
                flat.tofile(f)
                count += flat.size
                bar.update(len(batch))

    atomic_write(path, write)
    return count


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenize(
    raw_dir: Path,
    out_dir: Path,
    tokenizer_kind: str,
    vocab_size: int | None = None,
    tokenizer_name: str | None = None,
    val_fraction: float = 0.05,
) -> dict:
    """raw/ -> tokenizer.json, train.bin, val.bin, meta.json (meta written last)."""
    import datasets

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / "source.json").is_file():
        raise FileNotFoundError(
            f"{raw_dir} is not a downloaded corpus (no source.json): run the download first"
        )
    corpus = datasets.load_from_disk(str(raw_dir))
    train = [t for t in corpus["train"]["text"] if t.strip()]
    val_split = next((s for s in ("validation", "valid", "val", "test") if s in corpus), None)
    if val_split:
        val = [t for t in corpus[val_split]["text"] if t.strip()]
    else:  # hold out the last fraction of documents, as nanoGPT splits Shakespeare
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
        cut = len(train) - max(1, round(len(train) * val_fraction))
        train, val = train[:cut], train[cut:]
    if not train or not val:
        raise ValueError(f"{raw_dir}: the corpus has no non-empty text to tokenize")

    tokenizer = build_tokenizer(tokenizer_kind, train, vocab_size, tokenizer_name)
    vocab = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab)
    tokenizer_json = tokenizer.to_str()
    atomic_write(out_dir / "tokenizer.json", lambda tmp: Path(tmp).write_text(tokenizer_json))
    counts = {
        split: _write_tokens(tokenizer, texts, out_dir / f"{split}.bin", dtype, f"tokenizing {split}")
        for split, texts in (("train", train), ("val", val))
    }
    meta = {
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "train_documents": len(train),
        "val_documents": len(val),
        "vocab_size": vocab,
        "eos_id": eos_id(tokenizer),
        "dtype": np.dtype(dtype).name,
        "tokenizer": {"kind": tokenizer_kind, "name": tokenizer_name, "requested_vocab_size": vocab_size},
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "source": json.loads((raw_dir / "source.json").read_text()),
        "validation": val_split or f"last {val_fraction:.0%} of train documents",
        "sha256": {f"{split}.bin": sha256_file(out_dir / f"{split}.bin") for split in counts},
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out_dir / "meta.json", lambda tmp: Path(tmp).write_text(text))
    return meta


def load_tokens(data_dir: Path, split: str) -> np.memmap:
    """train.bin or val.bin as a read-only memmap of the dtype that meta.json records."""
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=meta["dtype"], mode="r")
