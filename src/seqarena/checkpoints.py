"""Training checkpoints that a kill, a full disk or a damaged file cannot turn into a wrong resume.

Each checkpoint is two files: ``step_00000100.pt`` (the state, written to a temporary file,
flushed to disk and renamed) and then ``step_00000100.json``, its manifest: the step, the
file's size and sha256, and the hash of the run's config fingerprint. A checkpoint counts only
when its manifest exists and matches the file, so a file truncated or flipped on disk, or one
whose manifest was never written (the job died between the two), is reported by name and
skipped in favour of the one before. States load with ``weights_only=True``: a checkpoint is
data, never code.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from seqarena.data import sha256_file
from seqarena.files import atomic_write


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


class _Hashing:
    """A file that updates a digest with every byte written to it (torch.save only writes)."""

    def __init__(self, file, digest):
        self.file, self.digest = file, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class CheckpointStore:
    """The checkpoints of one run, in ``folder``; the newest ``keep`` are kept."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("step_*.pt"))

    def save(self, step: int, state: dict) -> Path:
        """Write the state and then its manifest; the sha256 is taken as the bytes go out, so a
        multi-GB state is not read back (a stop signal's checkpoint must finish within the grace
        that torchrun and SLURM give it)."""
        path = self.folder / f"step_{step:08d}.pt"
        digest = hashlib.sha256()

        def write(tmp):
            with open(tmp, "wb") as f:
                torch.save(state, _Hashing(f, digest))

        atomic_write(path, write)
        manifest = {
            "step": step,
            "bytes": path.stat().st_size,
            "sha256": digest.hexdigest(),
            "fingerprint_sha256": fingerprint_hash(state.get("fingerprint") or {}),
        }
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
        for old in self._files()[: -self.keep]:
            old.with_suffix(".json").unlink(missing_ok=True)
            old.unlink()
        return path

    def problem(self, path: Path) -> str | None:
        """Why the checkpoint at ``path`` must not be loaded, or None."""
        manifest_path = path.with_suffix(".json")
        if not manifest_path.is_file():
            return f"it has no manifest {manifest_path.name} (the run stopped before writing it)"
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as e:
            return f"its manifest {manifest_path.name} is unreadable ({e})"
        size = path.stat().st_size
        if size != manifest["bytes"]:
            return f"it has {size} bytes, its manifest says {manifest['bytes']} (truncated?)"
        if sha256_file(path) != manifest["sha256"]:
            return "its sha256 differs from its manifest's (the file is damaged)"
        return None

    def newest(self) -> tuple[Path | None, dict | None]:
        """The newest checkpoint that is whole and loads as data, with its state; each one skipped
        on the way is reported, naming the file and why."""
        for path in reversed(self._files()):
            why = self.problem(path)
            if why is None:
                try:
                    return path, torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:
                    why = f"it does not load as data ({type(e).__name__}: {e})"
            print(f"skipping checkpoint {path}: {why}", file=sys.stderr, flush=True)
        return None, None

    def discard(self) -> Path:
        """Move the checkpoints of another config aside (never delete days of training silently)."""
        discarded = self.folder.with_name(f"{self.folder.name}.discarded")
        if discarded.exists():
            shutil.rmtree(discarded)
        self.folder.rename(discarded)
        return discarded
