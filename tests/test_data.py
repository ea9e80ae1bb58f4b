"""Data stage: real `datasets` loading from local files, tokenizers, deterministic memmaps."""

import json
import platform
import random
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from conftest import write_pile_shards
from seqarena.data import (
    Source,
    download,
    load_tokens,
    python_stdlib_files,
    stdlib_root,
    token_dtype,
    tokenize,
)


def make_corpus(path, docs=300, seed=0):
    """Paragraphs of generated English-like text (blank-line separated, as in a book)."""
    rng = random.Random(seed)
    words = "the a model state scan token attention mamba layer learns copies recalls fast slow".split()
    paragraphs = [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(docs)
    ]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path.read_text().split("\n\n")  # the records: paragraphs as the file holds them


@pytest.fixture
def corpus(tmp_path):
    paragraphs = make_corpus(tmp_path / "book.txt")
    raw = download(Source(kind="local", path=str(tmp_path / "book.txt")), tmp_path / "raw")
    return paragraphs, raw


def decode_docs(data_dir, split):
    tokenizer = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    eos = json.loads((data_dir / "meta.json").read_text())["eos_id"]
    ids = load_tokens(data_dir, split).tolist()
    docs, current = [], []
    for i in ids:
        if i == eos:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    assert current == [], "the token stream must end with EOS"
    return docs


def test_bpe_round_trip_and_meta(corpus, tmp_path):
    paragraphs, raw = corpus
    meta = tokenize(raw, tmp_path / "bpe", "bpe", vocab_size=300, val_fraction=0.1)
    train, val = decode_docs(tmp_path / "bpe", "train"), decode_docs(tmp_path / "bpe", "val")
    assert train + val == paragraphs  # every document, in order, decoded exactly
    assert len(val) == 30 and meta["validation"].startswith("last 10%")
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["eos_id"] == 0
    assert meta["train_tokens"] == load_tokens(tmp_path / "bpe", "train").size
    assert meta["train_tokens"] < sum(len(p) for p in paragraphs[:270])  # BPE merged something
    assert meta["source"]["path"].endswith("book.txt")


def test_tokenize_is_byte_identical_when_rerun(corpus, tmp_path):
    _, raw = corpus
    tokenize(raw, tmp_path / "a", "bpe", vocab_size=300)
    tokenize(raw, tmp_path / "b", "bpe", vocab_size=300)
    for name in ["tokenizer.json", "train.bin", "val.bin", "meta.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_byte_tokenizer_is_the_bytes(tmp_path):
    text = "Naïve café — ünïcödé\n\nSecond paragraph, plain."
    (tmp_path / "t.txt").write_text(text)
    raw = download(Source(kind="local", path=str(tmp_path / "t.txt")), tmp_path / "raw")
    meta = tokenize(raw, tmp_path / "byte", "byte", val_fraction=0.5)
    assert meta["vocab_size"] == 257 and meta["eos_id"] == 256
    first = text.split("\n\n")[0].encode()
    assert load_tokens(tmp_path / "byte", "train").tolist() == [*first, 256]
    assert decode_docs(tmp_path / "byte", "val") == ["Second paragraph, plain."]


def test_gpt_neox_tokenizer_from_shared_file(shared_data, corpus, tmp_path):
    _, raw = corpus
    meta = tokenize(raw, tmp_path / "hf", "hf", tokenizer_name=str(shared_data / "20B_tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert tokenizer.encode("Hello world!").ids == [12092, 1533, 2]
    assert meta["vocab_size"] == 50277 and meta["eos_id"] == 0 and meta["dtype"] == "uint16"


def test_a_hub_tokenizer_that_the_prefetch_cached_loads_on_a_node_without_network(shared_data, tmp_path):
    """The hub's own cache layout (what `seqarena prefetch` fills), read with HF_HUB_OFFLINE=1 by
    a fresh process as a compute-node job is."""
    snapshot = tmp_path / "hf/hub/models--EleutherAI--gpt-neox-20b/snapshots/0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_bytes((shared_data / "20B_tokenizer.json").read_bytes())
    (tmp_path / "hf/hub/models--EleutherAI--gpt-neox-20b/refs").mkdir()
    (tmp_path / "hf/hub/models--EleutherAI--gpt-neox-20b/refs/main").write_text("0123abcd")
    load = (
        "from seqarena.data import load_hf_tokenizer; "
        "print(load_hf_tokenizer('EleutherAI/gpt-neox-20b').encode('Hello world!').ids)"
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[12092,", "1533,", "2]"]


def test_jsonl_source_with_text_field_and_own_validation_split(tmp_path):
    rows = [{"body": f"record number {i} " * 3, "id": i} for i in range(50)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = download(
        Source(kind="local", path=str(tmp_path / "*.jsonl"), format="jsonl", text_field="body"),
        tmp_path / "r",
    )
    meta = tokenize(raw, tmp_path / "out", "byte", val_fraction=0.2)
    assert decode_docs(tmp_path / "out", "train") == [r["body"] for r in rows[:40]]
    assert meta["train_documents"] == 40 and meta["val_documents"] == 10


def test_bad_sources_fail_clearly_and_write_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        download(Source(kind="local", path=str(tmp_path / "missing.txt")), tmp_path / "raw")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no training records"):
        download(Source(kind="local", path=str(tmp_path / "empty.txt")), tmp_path / "raw")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no text field 'text'.*body"):
        download(Source(kind="local", path=str(tmp_path / "d.jsonl"), format="jsonl"), tmp_path / "raw")
    with pytest.raises(RuntimeError, match="could not fetch dataset 'Salesforce/wikitext'.*local files"):
        download(Source(kind="hf", path="Salesforce/wikitext", name="wikitext-2-raw-v1"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob("raw*"))
    with pytest.raises(FileNotFoundError, match="run the download first"):
        tokenize(tmp_path / "raw", tmp_path / "out", "byte")
    assert not (tmp_path / "out").exists()


def test_the_python_standard_library_is_a_corpus_of_its_source_files_a_record_each(tmp_path):
    files = python_stdlib_files()
    assert len(files) > 500 and all(f.suffix == ".py" for f in files) and files == sorted(files)
    assert not [f for f in files if "site-packages" in f.parts]  # the installed packages are not the library
    raw = download(Source(kind="python_stdlib", max_chars=300_000), tmp_path / "raw")
    records = pq.read_table(raw / "train.parquet").column("text").to_pylist()
    assert records[:3] == [f.read_bytes().decode("utf-8", errors="replace") for f in files[:3]]
    source = json.loads((raw / "source.json").read_text())
    assert source["python"] == platform.python_version() and source["files"] == len(files)
    assert source["stdlib"] == str(stdlib_root()) and all(f.is_relative_to(stdlib_root()) for f in files)
    assert source["sample_by"] == "document"


def test_a_source_names_its_path_unless_it_is_the_python_standard_library():
    with pytest.raises(ValueError, match="kind local needs a path"):
        Source(kind="local")
    with pytest.raises(ValueError, match="python_stdlib takes no path"):
        Source(kind="python_stdlib", path="corpus/*.py")


def test_whitespace_only_corpus_is_refused_before_any_output(tmp_path):
    (tmp_path / "blank.txt").write_text("   \n\n  \n\n\t\n")
    raw = download(Source(kind="local", path=str(tmp_path / "blank.txt"), sample_by="line"), tmp_path / "raw")
    with pytest.raises(ValueError, match="no non-empty text"):
        tokenize(raw, tmp_path / "out", "byte")
    assert not (tmp_path / "out").exists()


def test_token_dtype_widens_past_uint16():
    assert token_dtype(65536) is np.uint16 and token_dtype(65537) is np.uint32


def test_tiny_shakespeare(shared_data, tmp_path):
    raw = download(Source(kind="local", path=str(shared_data / "tinyshakespeare.txt")), tmp_path / "raw")
    meta = tokenize(raw, tmp_path / "out", "byte")
    # byte-level: every character but the paragraph breaks becomes one token
    assert 1_000_000 < meta["train_tokens"] + meta["val_tokens"] < 1_115_394
    assert decode_docs(tmp_path / "out", "train")[0].startswith("First Citizen:\nBefore we proceed")


def generated_pile(folder, shards: int, docs_per_shard: int, seed=0) -> list[str]:
    """Generated documents in the Pile's on-disk format; returns them in order."""
    rng = random.Random(seed)
    words = "the pile has many sources of text and every one of them is a document".split()
    docs = [
        " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
        for _ in range(shards * docs_per_shard)
    ]
    write_pile_shards(folder, docs, shards)
    return docs


def test_pile_shards_stream_up_to_a_token_budget(tmp_path):
    docs = generated_pile(tmp_path / "pile", shards=3, docs_per_shard=40)
    source = Source(kind="local", path=str(tmp_path / "pile" / "*.jsonl.zst"), format="jsonl")
    raw = download(source, tmp_path / "raw")
    meta = tokenize(raw, tmp_path / "out", "byte", val_fraction=0.1, max_tokens=5000)
    assert meta["train_tokens"] == load_tokens(tmp_path / "out", "train").size == 5000
    ids = load_tokens(tmp_path / "out", "train").tolist()
    expected = [t for doc in docs[:108] for t in (*doc.encode(), 256)][:5000]  # the shards in order
    assert ids == expected and meta["train_documents"] == ids.count(256) + 1
    assert decode_docs(tmp_path / "out", "val") == docs[108:]  # the last 10% of records, whole


def test_shards_and_processes_do_not_change_the_output(tmp_path):
    """Seven-record shards on two spawned processes, cut mid-shard at the budget, write the same
    bytes as one shard in one process."""
    generated_pile(tmp_path / "pile", shards=2, docs_per_shard=30)
    raw = download(Source(kind="local", path=str(tmp_path / "pile"), format="jsonl"), tmp_path / "raw")
    for max_tokens in (None, 4321):
        one = tokenize(raw, tmp_path / "one", "bpe", vocab_size=300, max_tokens=max_tokens)
        sharded = {"workers": 2, "shard_documents": 7}
        many = tokenize(raw, tmp_path / "many", "bpe", vocab_size=300, max_tokens=max_tokens, **sharded)
        assert many == one and (max_tokens is None or one["train_tokens"] == max_tokens)
        for name in ["tokenizer.json", "train.bin", "val.bin", "meta.json"]:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name
        assert not (tmp_path / "many" / "shards.partial").exists()


def test_a_killed_tokenize_resumes_from_its_finished_shards(tmp_path, monkeypatch):
    """The third shard's encoding dies; the rerun encodes only the shards not finished, and a
    changed corpus discards them."""
    import seqarena.data as data

    docs = generated_pile(tmp_path / "pile", shards=2, docs_per_shard=25)
    raw = download(Source(kind="local", path=str(tmp_path / "pile"), format="jsonl"), tmp_path / "raw")
    expected = tokenize(raw, tmp_path / "whole", "byte", val_fraction=0.2)
    write_tokens, encoded = data._write_tokens, []

    def dies_at_the_third(tokenizer, batches, path, dtype):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # as a SIGINT would, mid-run
        encoded.append(path.name)
        return write_tokens(tokenizer, batches, path, dtype)

    monkeypatch.setattr(data, "_write_tokens", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        tokenize(raw, tmp_path / "out", "byte", val_fraction=0.2, shard_documents=10)
    assert not (tmp_path / "out" / "meta.json").exists()
    assert sorted(p.name for p in (tmp_path / "out/shards.partial").glob("*.bin")) == encoded

    encoded.clear()
    monkeypatch.setattr(data, "_write_tokens", lambda *a: encoded.append(a[2].name) or write_tokens(*a))
    assert tokenize(raw, tmp_path / "out", "byte", val_fraction=0.2, shard_documents=10) == expected
    assert encoded == ["train-000002.bin", "train-000003.bin", "val-000000.bin"]
    assert (tmp_path / "out/train.bin").read_bytes() == (tmp_path / "whole/train.bin").read_bytes()

    encoded.clear()
    monkeypatch.setattr(data, "_write_tokens", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        tokenize(raw, tmp_path / "out", "byte", val_fraction=0.2, shard_documents=10)
    (tmp_path / "pile" / "01.jsonl.zst").unlink()  # a different corpus under the same raw folder
    raw = download(Source(kind="local", path=str(tmp_path / "pile"), format="jsonl"), tmp_path / "raw")
    monkeypatch.setattr(data, "_write_tokens", write_tokens)
    tokenize(raw, tmp_path / "out", "byte", val_fraction=0.2, shard_documents=10)
    assert decode_docs(tmp_path / "out", "train") == docs[:20]


def test_shard_without_the_text_field_or_corrupt_is_named_and_nothing_is_written(tmp_path):
    generated_pile(tmp_path / "pile", shards=2, docs_per_shard=5)
    (tmp_path / "pile" / "01.jsonl.zst").write_bytes((tmp_path / "pile" / "01.jsonl.zst").read_bytes()[:-9])
    source = Source(kind="local", path=str(tmp_path / "pile"), format="jsonl")
    with pytest.raises(ValueError, match=r"01\.jsonl\.zst cannot be read"):
        download(source, tmp_path / "raw")
    assert not list(tmp_path.glob("raw*"))
    (tmp_path / "pile" / "01.jsonl.zst").unlink()
    with pytest.raises(
        ValueError, match=r"00\.jsonl\.zst has no text field 'content'; its fields: \['meta', 'text'\]"
    ):
        download(
            Source(kind="local", path=str(tmp_path / "pile"), format="jsonl", text_field="content"),
            tmp_path / "raw",
        )
    assert not list(tmp_path.glob("raw*"))
    raw = download(source, tmp_path / "raw")
    with pytest.raises(ValueError, match="tokenizer kind must be 'bpe', 'hf' or 'byte', not 'sentencepiece'"):
        tokenize(raw, tmp_path / "out", "sentencepiece")
    assert not (tmp_path / "out").exists()


def test_line_per_row_corpus_gets_one_eos_per_document(tmp_path):
    """WikiText's rows are lines; its articles begin at a ' = Title = ' row."""
    rows = [
        " = Valkyria = \n",
        "",
        " The game began . \n",
        " = = Plot = = \n",
        " It ends . \n",
        " = Tower = \n",
        " A building . \n",
    ]
    (tmp_path / "w.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    source = Source(kind="local", path=str(tmp_path / "w.jsonl"), format="jsonl", document_start=r"^ = [^=]")
    meta = tokenize(download(source, tmp_path / "raw"), tmp_path / "out", "byte", val_fraction=0.5)
    assert decode_docs(tmp_path / "out", "train") == [
        " = Valkyria = \n\n The game began . \n = = Plot = = \n It ends . "
    ]
    assert decode_docs(tmp_path / "out", "val") == [" = Tower = \n A building . "]
    assert meta["train_documents"] == meta["val_documents"] == 1


def test_a_test_split_is_never_used_as_validation(tmp_path):
    for split in ("train", "test"):
        rows = [{"text": f"{split} record {i}"} for i in range(20)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import datasets

    corpus = datasets.load_dataset("json", data_dir=str(tmp_path))  # a hub-shaped corpus: train + test
    assert sorted(corpus) == ["test", "train"]
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, ds in corpus.items():
        ds.to_parquet(raw / f"{split}.parquet")
    (raw / "source.json").write_text("{}")
    meta = tokenize(raw, tmp_path / "out", "byte", val_fraction=0.25)
    assert decode_docs(tmp_path / "out", "val") == [f"train record {i}" for i in range(15, 20)]
    assert "test" not in "".join(decode_docs(tmp_path / "out", "train"))
    assert meta["validation"] == "last 25% of train records (the source's test split is left unused)"


TRACE_TOKENIZE = """
import sys, tracemalloc
from pathlib import Path
from seqarena.data import Source, download, tokenize
import datasets, pyarrow.parquet, tokenizers  # imports are no part of the peak
folder = Path(sys.argv[1])
tracemalloc.start()
raw = download(Source(kind="local", path=str(folder / "pile"), format="jsonl"), folder / "raw")
tokenize(raw, folder / "out", "hf", tokenizer_name=sys.argv[2])
print(tracemalloc.get_traced_memory()[1])
"""


def test_download_and_tokenize_memory_is_flat_in_the_corpus_size(shared_data, tmp_path):
    """Python's peak allocations at 10x the data stay within 1.5x of those at 1x (tracemalloc; the
    two in processes of their own, side by side)."""
    runs = {}
    for scale in (1, 10):
        generated_pile(tmp_path / f"x{scale}" / "pile", shards=scale, docs_per_shard=3000, seed=scale)
        script = [
            sys.executable,
            "-c",
            TRACE_TOKENIZE,
            str(tmp_path / f"x{scale}"),
            str(shared_data / "20B_tokenizer.json"),
        ]
        runs[scale] = subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {}
    for scale, run in runs.items():
        out, err = run.communicate()
        assert run.returncode == 0, err[-3000:]
        peaks[scale] = int(out.split()[-1])
    corpus = {s: sum(p.stat().st_size for p in (tmp_path / f"x{s}/raw").glob("*.parquet")) for s in peaks}
    assert corpus[10] > 9 * corpus[1]
    assert peaks[10] < 1.5 * peaks[1], peaks


def test_the_shipped_files_are_the_shared_files_or_their_first_records(shared_data):
    """The embedded default's data, checked against the originals it was cut from."""
    import gzip

    from seqarena import embedded

    assert sorted(embedded.checksums()) == [
        "lambada_openai.jsonl.gz",
        "piqa.jsonl.gz",
        "tinyshakespeare.txt.gz",
    ]
    readme = (embedded.FOLDER / "README.md").read_text()
    for name, digest in embedded.checksums().items():
        assert digest in readme and name in readme  # each file's checksum beside its source and licence
    text = gzip.decompress(embedded.path("tinyshakespeare.txt.gz").read_bytes())
    assert text == (shared_data / "tinyshakespeare.txt").read_bytes()
    for name, original in (
        ("lambada_openai.jsonl.gz", "lambada_test.jsonl"),
        ("piqa.jsonl.gz", "piqa_valid.jsonl"),
    ):
        records = gzip.decompress(embedded.path(name).read_bytes()).splitlines(keepends=True)
        assert len(records) == 500 and records == (shared_data / original).read_bytes().splitlines(True)[:500]
    assert sum(p.stat().st_size for p in embedded.FOLDER.glob("*.gz")) < 3_000_000


def test_an_embedded_source_reads_like_the_same_file_given_locally(shared_data, tmp_path):
    shipped = download(Source(kind="embedded", path="tinyshakespeare.txt.gz"), tmp_path / "shipped")
    local = download(Source(kind="local", path=str(shared_data / "tinyshakespeare.txt")), tmp_path / "local")
    a, b = (pq.read_table(raw / "train.parquet").column("text").to_pylist() for raw in (shipped, local))
    assert a == b and len(a) > 7000
    assert json.loads((shipped / "source.json").read_text())["kind"] == "embedded"


def test_a_damaged_or_unknown_shipped_file_is_refused_naming_it(tmp_path, monkeypatch):
    from seqarena import embedded

    copy = tmp_path / "embedded"
    copy.mkdir()
    for name in (*embedded.checksums(), "SHA256SUMS"):
        (copy / name).write_bytes((embedded.FOLDER / name).read_bytes())
    damaged = bytearray((copy / "piqa.jsonl.gz").read_bytes())
    damaged[100] ^= 0xFF
    (copy / "piqa.jsonl.gz").write_bytes(bytes(damaged))
    monkeypatch.setattr(embedded, "FOLDER", copy)
    with pytest.raises(ValueError, match=r"embedded data file .*piqa\.jsonl\.gz does not match its checksum"):
        embedded.task_dataset("piqa.jsonl.gz", "validation")
    with pytest.raises(ValueError, match=r"no embedded data file 'wiki\.txt'; the package ships"):
        download(Source(kind="embedded", path="wiki.txt"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    embedded.path("lambada_openai.jsonl.gz")  # the undamaged files still read
