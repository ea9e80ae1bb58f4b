"""Writing files whole: a reader, or a rerun after a crash, never sees half of one (torch-free)."""

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename onto ``path``: a reader never sees
    half a file, and a failed write (a full disk) leaves the old file, names the path, and leaves
    no temporary behind.

    The file gets the permissions of an ordinary new file (mkstemp's are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"could not write {path}: {e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
