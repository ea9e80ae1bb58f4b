"""Small, licensed data shipped inside the package, so the default pipeline needs no network.

Each file is checked against ``SHA256SUMS`` before it is read (README.md beside this file
gives each file's source and licence). ``tasks/`` holds the lm-eval tasks over the shipped
slices. ``seqarena eval`` always includes them.
"""

from pathlib import Path

from seqarena.data import sha256_file

FOLDER = Path(__file__).parent
TASKS = FOLDER / "tasks"


def checksums() -> dict[str, str]:
    """File name -> sha256, as ``sha256sum`` writes them."""
    lines = (FOLDER / "SHA256SUMS").read_text().splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line)}


def path(name: str) -> Path:
    """The shipped file ``name``, refused (naming it) unless its bytes match its checksum."""
    expected = checksums()
    if name not in expected:
        raise ValueError(f"no embedded data file {name!r}; the package ships {sorted(expected)}")
    file = FOLDER / name
    digest = sha256_file(file) if file.is_file() else "missing"
    if digest != expected[name]:
        raise ValueError(
            f"embedded data file {file} does not match its checksum in {FOLDER / 'SHA256SUMS'} "
            f"(sha256 {digest}, expected {expected[name]}): the installed package is damaged; reinstall it"
        )
    return file


def task_dataset(name: str, split: str):
    """A shipped jsonl slice as a DatasetDict with one split (lm-eval's ``custom_dataset``)."""
    import datasets

    return datasets.load_dataset("json", data_files={split: str(path(name))})
