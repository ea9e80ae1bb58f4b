"""Restrict the CUDA archs of a mamba-ssm or causal-conv1d source build (envs/gpu.post-deploy.sh).

Their ``setup.py`` files append a dozen ``-gencode`` pairs to ``cc_flag``, one per GPU
generation; compiling all of them takes about an hour. This rewrites the file so that it
builds for the configured archs only (``config kernels.cuda_archs``), which takes minutes.
Usage: ``python -m seqarena.ops.cuda_build setup.py "80;90"``.
"""

import re
import sys
from pathlib import Path

GENCODE_PAIR = re.compile(
    r'(?P<indent>\n[ \t]*)cc_flag\.append\("-gencode"\)'
    r'\n[ \t]*cc_flag\.append\("arch=compute_\w+,code=sm_\w+"\)'
)
CC_FLAG_INIT = re.compile(r"(?P<indent>\n[ \t]*)cc_flag = \[\]")


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


def main(argv: list[str]) -> None:
    path, archs = Path(argv[0]), [a for a in argv[1].split(";") if a]
    path.write_text(restrict_archs(path.read_text(), archs))
    print(f"{path}: building for sm_{', sm_'.join(archs)} only")


if __name__ == "__main__":
    main(sys.argv[1:])
