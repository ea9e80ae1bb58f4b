"""Restrict the CUDA archs of a mamba-ssm or causal-conv1d source build (envs/gpu.post-deploy.sh).

Their ``setup.py`` files append a dozen ``-gencode`` pairs to ``cc_flag``, one per GPU
generation; compiling all of them takes about an hour. This rewrites the file so that it
builds for the configured archs only (``config kernels.cuda_archs``), which takes minutes.
Before touching anything it checks the toolchain: every arch must be one the installed nvcc
compiles for, and torch's CUDA major must equal nvcc's (an extension built against another
CUDA does not load), so a mismatch fails in a second, naming both versions, not after an hour.
Where torch's headers require C++20 (torch 2.14), the ``-std=c++17`` flags are raised too.

A source file that explicitly instantiates its templates many times is split into files of
``INSTANTIATIONS_PER_FILE`` each, listed in ``setup.py`` in its place: a translation unit compiles
on one core, and causal-conv1d's ``causal_conv1d_bwd.cu`` (18 instantiations) took 231 s on one
core here and kept a 16-core build waiting about 8 minutes. The parts hold the same definitions
and, between them, each instantiation once, so the extension has the same symbols.
Usage: ``python -m seqarena.ops.cuda_build setup.py "80;90"``.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

GENCODE_PAIR = re.compile(
    r'(?P<indent>\n[ \t]*)cc_flag\.append\("-gencode"\)'
    r'\n[ \t]*cc_flag\.append\("arch=compute_\w+,code=sm_\w+"\)'
)
CC_FLAG_INIT = re.compile(r"(?P<indent>\n[ \t]*)cc_flag = \[\]")
EXPLICIT_INSTANTIATION = re.compile(r"^template (?:void|class|struct) .*;[ \t]*$", re.M)
INSTANTIATIONS_PER_FILE = 2


def restrict_archs(source: str, archs: list[str]) -> str:
    """Every ``-gencode`` pair becomes ``pass`` (blocks stay valid); one pair per arch follows
    ``cc_flag = []``. Fails, naming what it missed, if the file has neither."""
    if not archs or not all(re.fullmatch(r"[0-9]+[a-z]?", a) for a in archs):
        raise ValueError(f"CUDA archs must look like 80 or 90a, got {archs}")
    source, pairs = GENCODE_PAIR.subn(lambda m: f"{m['indent']}pass", source)
    init = CC_FLAG_INIT.search(source)
    if pairs == 0 or init is None:
        raise ValueError("found no cc_flag -gencode list to restrict: the setup.py layout changed")
    flags = "".join(f'{init["indent"]}cc_flag += ["-gencode", "arch=compute_{a},code=sm_{a}"]' for a in archs)
    return source[: init.end()] + flags + source[init.end() :]


def raise_cxx_standard(source: str, standard: str) -> str:
    """Every ``-std=c++NN`` flag becomes ``-std=c++<standard>``: torch 2.14's headers refuse C++17,
    and mamba-ssm's setup.py asks for it."""
    return re.sub(r"-std=c\+\+\d+", f"-std=c++{standard}", source)


def split_instantiations(source: str, per_file: int = INSTANTIATIONS_PER_FILE) -> list[str]:
    """The texts of the parts of a .cu file: each the whole file with only its share of the explicit
    instantiations (``template void f<...>(...);``), at most ``per_file`` of them. A file with no
    more than ``per_file`` stays whole."""
    lines = EXPLICIT_INSTANTIATION.findall(source)
    if len(lines) <= per_file:
        return [source]
    common = EXPLICIT_INSTANTIATION.sub("", source)
    shares = [lines[i : i + per_file] for i in range(0, len(lines), per_file)]
    return [common.rstrip() + "\n\n" + "\n".join(share) + "\n" for share in shares]


def split_sources(setup_py: Path) -> list[str]:
    """Split each .cu file that ``setup_py`` lists (as ``"csrc/...cu",``) with many explicit
    instantiations into parts beside it, listed in its place; the rewritten setup.py's text."""
    source = setup_py.read_text()
    for listed in re.findall(r'"([\w/.-]+\.cu)",', source):
        path = setup_py.parent / listed
        parts = split_instantiations(path.read_text())
        if len(parts) == 1:
            continue
        names = []
        for i, text in enumerate(parts):
            part = path.with_name(f"{path.stem}_part{i}.cu")
            part.write_text(text)
            names.append(f'"{part.relative_to(setup_py.parent).as_posix()}",')
        source = source.replace(f'"{listed}",', " ".join(names))
    return source


def torch_cxx_standard() -> str | None:
    """ "20" when the installed torch's headers require C++20 (ATen.h says so), else None."""
    import torch

    aten = Path(torch.__file__).parent / "include" / "ATen" / "ATen.h"
    return "20" if aten.is_file() and "C++20 or later" in aten.read_text() else None


def nvcc_version(nvcc: str = "nvcc") -> str:
    """ "13.0" from ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"release (\d+\.\d+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the CUDA release from `{nvcc} --version`: {out.strip()}")
    return found[1]


def check_toolchain(archs: list[str], torch_cuda: str | None, nvcc: str = "nvcc") -> None:
    """Fail before compiling when nvcc cannot build an arch or torch was built for another CUDA."""
    if shutil.which(nvcc) is None:
        raise ValueError(
            f"{nvcc} is not on PATH: the CUDA build needs the toolkit's compiler "
            "(conda: cuda-nvcc, as envs/gpu.yaml has; else the CUDA toolkit's bin/ on PATH)"
        )
    release = nvcc_version(nvcc)
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    supported = sorted({int(a) for a in re.findall(r"compute_(\d+)", listed)})
    unsupported = [a for a in archs if int(re.match(r"\d+", a)[0]) not in supported]
    if unsupported:
        raise ValueError(
            f"nvcc {release} cannot compile for sm_{', sm_'.join(unsupported)} (config kernels.cuda_archs); "
            f"it supports {', '.join(map(str, supported))}"
        )
    if torch_cuda is None:
        major = release.split(".")[0]
        raise ValueError(
            f"torch is a CPU build (no CUDA) and nvcc is CUDA {release}: install torch for CUDA {major}"
        )
    if torch_cuda.split(".")[0] != release.split(".")[0]:
        raise ValueError(
            f"torch was built for CUDA {torch_cuda} and nvcc is CUDA {release}: the majors must match "
            "(install the torch build for your nvcc, or the nvcc for your torch)"
        )


def main(argv: list[str]) -> None:
    import torch

    path, archs = Path(argv[0]), [a for a in argv[1].split(";") if a]
    try:
        check_toolchain(archs, torch.version.cuda)
    except ValueError as e:
        sys.exit(f"CUDA build of {path.parent.name} refused before compiling: {e}")
    source = restrict_archs(split_sources(path), archs)
    standard = torch_cxx_standard()
    path.write_text(raise_cxx_standard(source, standard) if standard else source)
    files = len(re.findall(r'\.cu",', source))
    print(f"{path}: building for sm_{', sm_'.join(archs)} only, {files} CUDA files")


if __name__ == "__main__":
    main(sys.argv[1:])
