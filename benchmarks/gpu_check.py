"""The GPU acceptance run (`make gpu-check`): one command on any CUDA machine, one markdown table.

1. builds causal-conv1d and mamba-ssm for this GPU's arch only (envs/gpu.post-deploy.sh, the
   conda env's own script), timed; the wheels are kept (--wheels) and reused by later runs;
2. checks every scan backend (cuda, cpp, torch) against the float64 reference: scan, SSD, conv
   and Mamba-3 SISO, output and every gradient, float32 and bfloat16 inputs; then every family's
   tiny model on the cuda backend against the torch backend, both on the GPU (logits, every
   gradient, decoding, and decoding with each step one CUDA graph replay, as the generation rows
   time it), so that Mamba-3's Triton (SISO) and TileLang (MIMO) kernels run in a model; and the
   Transformers' graphed decoding against their forward; these checks of values run each of
   mamba_ssm's Triton kernels in its first config, untimed, compiled on every core before it runs
   (seqarena.ops.triton_compile), not each config compiled and timed at the first launch;
3. the Fig. 8 kernel benchmark: batch 1, D 1024, N 16, bf16, L 512..512K: the scan and the SSD
   against SDPA attention (FlashAttention-2 on a GPU) and the paper's PyTorch parallel scan and
   FFT convolution, inputs made on the device before timing, what runs out of memory left out;
4. generation: prompt 2048, 128 new tokens, batch 1..64, Mamba vs Transformer++ of matched size,
   each step one CUDA graph replay for both (mamba_ssm's cg=True);
5. times a bf16-autocast training step of mamba-130m and transformer-125m at the paper's shape
   (sequences of 2048 tokens): tokens/s (the median after the warm-up steps), MFU, peak memory;
   eager, then compiled as config/paper.yaml trains.

On a machine without CUDA the GPU parts are skipped, each saying why, and the rest runs at tiny
sizes so that every path stays exercised (CI runs this mode). Writes gpu-check.md (the table
that benchmarks/README.md quotes) and gpu-check.json after each row, so a run cut short keeps
every row it measured, and build.log and errors.log (a failed section's traceback) under
--out; exits non-zero when a check fails. On a GPU where the cuda backend does not run, the Mamba
rows are not measured (they would time the Python-loop reference), and fail.
    make gpu-check  (python benchmarks/gpu_check.py [--out results/gpu-check] [--wheels DIR] [--only ...])
"""

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from seqarena.bench import bench_generation, bench_kernels, bench_training
from seqarena.env import backend_record
from seqarena.files import atomic_write
from seqarena.models import build_model
from seqarena.models.base import Decoder
from seqarena.ops import backends, cuda, use_backend
from seqarena.ops.triton_compile import as_check, untuned

REPO = Path(__file__).resolve().parents[1]

# (GPU, CPU): the shapes on a GPU; tiny ones on a CPU, where only the paths are checked.
SHAPES = {
    "train_models": (("mamba-130m", "transformer-125m"), ("mamba-tiny", "transformer-tiny")),
    "train": (
        dict(steps=10, warmup_steps=3, seq_len=2048, micro_batch=8, vocab_size=50277),
        dict(steps=2, warmup_steps=1, seq_len=64, micro_batch=2, vocab_size=512),
    ),
    "kernels": (
        dict(lengths=[2**k for k in range(9, 20)], dim=1024, state=16, repeats=10),
        dict(lengths=[256, 512], dim=128, state=16, repeats=2),
    ),
    "generation_models": (("mamba-130m", "transformer-125m"), ("mamba-tiny", "transformer-tiny")),
    "generation": (
        dict(prompt_len=2048, new_tokens=128, batch_sizes=[1, 4, 16, 64], repeats=3),
        dict(prompt_len=32, new_tokens=8, batch_sizes=[1, 4], repeats=1),
    ),
}


@dataclass
class Row:
    check: str
    status: str  # passed, failed, skipped, measured
    result: str
    seconds: float | None = None


def shape(key: str, gpu: bool):
    return SHAPES[key][0 if gpu else 1]


def build_kernels(out: Path, wheels: Path) -> Row:
    """The GPU env's post-deploy script, for this GPU's arch, in this interpreter's environment."""
    if not torch.cuda.is_available():
        return Row("build kernels", "skipped", "no CUDA device (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "SEQARENA_WORKFLOW_DIR": str(REPO),
        "SEQARENA_CUDA_ARCHS": f"{major}{minor}",
        "SEQARENA_CUDA_WHEELS": str(wheels),
    }
    start = time.perf_counter()
    with open(out / "build.log", "w") as log:
        done = subprocess.run(
            ["bash", str(REPO / "envs/gpu.post-deploy.sh")], env=env, stdout=log, stderr=log
        )
    seconds = time.perf_counter() - start
    lines = (out / "build.log").read_text().splitlines()
    said = [line for line in lines if line.startswith(("built ", "installed ", "CUDA build of"))]
    if done.returncode != 0:
        return Row("build kernels", "failed", "; ".join(said + lines[-1:]) + " (build.log)", seconds)
    return Row(f"build kernels for sm_{major}{minor}", "passed", "; ".join(said), seconds)


def backend_rows() -> Iterator[Row]:
    for name in backends.backend_names():
        for dtype in (torch.float32, torch.bfloat16):
            label = f"backend {name} {str(dtype).removeprefix('torch.')} vs float64 reference"
            record = backend_record(name, dtype)
            if not record["available"]:
                yield Row(label, "skipped", record["reason"])
                continue
            worst = max(record["errors"], key=record["errors"].get)
            limits = ", ".join(f"{op} {limit:.0e}" for op, limit in record["tolerances"].items())
            error = record["max_relative_error"]
            result = (
                f"on {record['device']}: largest relative error {error:.1e} ({worst}; tolerances "
                f"{limits}), scan, SSD, conv and Mamba-3 SISO, outputs and all gradients"
            )
            yield Row(label, "passed" if record["passed"] else "failed", result, record["seconds"])


# Every family whose mixer runs on the cuda backend, and the largest relative error its cuda
# logits, gradients and decoding may show against the torch backend's in float32 on the same GPU:
# 1e-2 where mamba_ssm's Triton and TileLang matmuls take float32 in TF32 (as the env's self-check
# allows its SSD), 5e-2 where its Mamba-3 SISO wrapper computes in bfloat16 (bfloat16's own).
FAMILY_TOLERANCES = {
    "mamba": 1e-2,
    "mamba2": 1e-2,
    "hybrid": 1e-2,
    "mamba_lti": 1e-2,
    "mamba3": 5e-2,
    "mamba3_mimo": 1e-2,
}
# A Transformer's steps against its forward, both SDPA on the GPU in float32 (TF32 where allowed).
ATTENTION_GRAPH_TOLERANCE = 1e-2
FAMILY_VOCAB, FAMILY_LENGTH, FAMILY_PREFILL = 61, 45, 40


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||; inf where either holds a NaN, so that it counts as the worst."""
    error = float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))
    return math.inf if math.isnan(error) else error


def family_model(model_name: str, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    """A float32 model, its weights moved off their initialisation so that every one matters, and
    token ids (2, FAMILY_LENGTH) for it."""
    torch.manual_seed(0)
    model = build_model(model_name, vocab_size=FAMILY_VOCAB).float().to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model, torch.randint(0, FAMILY_VOCAB, (2, FAMILY_LENGTH), device=device)


def decoded_logits(model, ids: torch.Tensor, cuda_graph: bool = False) -> torch.Tensor:
    """The logits of decoding ``ids`` through a cache: a prefill of FAMILY_PREFILL tokens, then a
    step a token (each one CUDA graph replay with ``cuda_graph``, as the generation rows time it),
    past one 32-step chunk."""
    decoder = Decoder(model, ids.shape[0], ids.shape[1], cuda_graph=cuda_graph)
    with torch.no_grad():
        prefix = decoder.prefill(ids[:, :FAMILY_PREFILL])
        steps = [decoder.step(ids[:, t]).clone() for t in range(FAMILY_PREFILL, ids.shape[1])]
    return torch.cat([prefix, torch.stack(steps, 1)], 1)


def on_backend(backend: str, model, ids: torch.Tensor) -> tuple:
    """The model's logits and each parameter's gradient on ``backend``."""
    with use_backend(backend):
        model.zero_grad()
        logits = model(ids)
        (logits * torch.linspace(-1, 1, logits.shape[-1], device=ids.device)).sum().backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def on_cuda(model, ids: torch.Tensor) -> tuple:
    """The model's logits, each parameter's gradient and its decoded logits on the cuda backend."""
    logits, grads = on_backend("cuda", model, ids)
    with use_backend("cuda"):
        return logits, grads, decoded_logits(model, ids)


def cuda_versus_torch(model_name: str, device: torch.device) -> dict[str, float]:
    """A family's model on the cuda and the torch backend: the relative error of the logits, of
    each parameter's gradient (``grad <name>``; inf where one backend gave none) and of decoding;
    on a GPU also of decoding with each step one CUDA graph replay (``decoding as CUDA graphs``)."""
    model, ids = family_model(model_name, device)
    want_logits, want_grads = on_backend("torch", model, ids)
    logits, grads, decoded = as_check(functools.partial(on_cuda, model, ids), device)
    errors = {"logits": relative_error(logits, want_logits), "decoding": relative_error(decoded, want_logits)}
    if device.type == "cuda":
        with use_backend("cuda"), untuned():
            errors["decoding as CUDA graphs"] = relative_error(decoded_logits(model, ids, True), want_logits)
    for name, want in want_grads.items():
        got = grads[name]
        errors[f"grad {name}"] = math.inf if got is None or want is None else relative_error(got, want)
    return errors


def attention_graph_errors(model_name: str, device: torch.device) -> dict[str, float]:
    """A Transformer's decoding, each step one CUDA graph replay, against its full forward."""
    model, ids = family_model(model_name, device)
    with torch.no_grad():
        return {"decoding as CUDA graphs": relative_error(decoded_logits(model, ids, True), model(ids))}


def family_row(label: str, limit: float, errors_of) -> Row:
    """One family's row: its largest relative error against ``limit``, or the error that stopped it
    (one family's failure leaves the others' rows)."""
    start = time.perf_counter()
    try:
        errors = errors_of()
    except Exception as e:
        return Row(label, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - start)
    worst = max(errors, key=errors.get)
    grads = sum(name.startswith("grad ") for name in errors)
    checked = [name for name in errors if not name.startswith("grad ")] + [f"{grads} gradients"] * (grads > 0)
    said = f"largest relative error {errors[worst]:.1e} ({worst}; tolerance {limit:.0e})"
    result = ", ".join([said, *checked])
    return Row(label, "passed" if errors[worst] <= limit else "failed", result, time.perf_counter() - start)


def family_rows(device: torch.device) -> Iterator[Row]:
    """Each family's row; MIMO's last: its TileLang kernels compile at their first call, for a time
    not yet measured on a GPU, and a call cut short there keeps every row before it."""
    reason = backends._BACKENDS["cuda"].why_not(torch.empty(0, device=device))
    if reason is not None:
        yield Row("families on cuda vs torch", "skipped", reason)
        return

    def versus_torch(family: str) -> Row:
        label = f"family {family}-tiny on cuda vs torch (float32, L {FAMILY_LENGTH})"
        if family == "mamba3_mimo" and cuda.kernels().mamba3_mimo is None:
            return Row(label, "skipped", cuda.kernels().mimo_reason)
        errors_of = functools.partial(cuda_versus_torch, f"{family}-tiny", device)
        return family_row(label, FAMILY_TOLERANCES[family], errors_of)

    for family in [f for f in FAMILY_TOLERANCES if f != "mamba3_mimo"]:
        yield versus_torch(family)
    for family in ("transformer", "transformer_abs"):
        label = f"family {family}-tiny decoding as CUDA graphs vs its forward (float32, L {FAMILY_LENGTH})"
        errors_of = functools.partial(attention_graph_errors, f"{family}-tiny", device)
        yield family_row(label, ATTENTION_GRAPH_TOLERANCE, errors_of)
    yield versus_torch("mamba3_mimo")


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def training_rows(gpu: bool, compile: bool) -> Iterator[Row]:
    options = {**shape("train", gpu), "compile": compile}
    for model in shape("train_models", gpu):
        start = time.perf_counter()
        result = bench_training(model, **options)
        mfu = "n/a" if result["mfu"] is None else f"{result['mfu']:.1%}"
        yield Row(
            f"train step {model} (L {options['seq_len']}, micro-batch {options['micro_batch']}"
            f"{', bf16 autocast' if gpu else ', float32'}{', compiled' if options['compile'] else ''}; "
            f"median of {options['steps'] - options['warmup_steps']} steps)",
            "measured",
            f"{result['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, peak memory "
            f"{gib(result['peak_memory_bytes'])}, scan backend {result['scan_backend'] or 'none'}",
            time.perf_counter() - start,
        )


def versus(ms: float, attention: float | None) -> str:
    return f" ({ms / attention:.2f}x attention)" if attention else ""


def kernel_rows(gpu: bool) -> Iterator[Row]:
    """A length at a time, the shortest first: a run cut short keeps the lengths it measured."""
    options = shape("kernels", gpu)
    for length in sorted(options["lengths"]):
        start = time.perf_counter()
        table = bench_kernels(**{**options, "lengths": [length]})
        seconds = time.perf_counter() - start
        for phase in ("fwd", "fwd+bwd"):
            found = {
                (r["op"], r["backend"]): r["median_ms"]
                for r in table
                if r["seq_len"] == length and r["pass"] == phase
            }
            attention = found.get(("attention", "sdpa"))
            said = [
                f"{op} {backend} {ms:.3f} ms{versus(ms, attention)}"
                for (op, backend), ms in found.items()
                if op != "attention"
            ]
            said.append("attention (SDPA) " + (f"{attention:.3f} ms" if attention else "out of memory"))
            yield Row(
                f"kernels {phase} L {length} (batch 1, D {options['dim']}, N {options['state']})",
                "measured",
                "; ".join(said),
                seconds if phase == "fwd" else None,  # one timing of both passes
            )


def generation_rows(gpu: bool) -> Iterator[Row]:
    """A batch size at a time, the smallest first, both models at each: a run cut short keeps the
    batch sizes it measured (each call builds the model again, seconds beside its decoding)."""
    options = shape("generation", gpu)
    for batch in sorted(options["batch_sizes"]):
        start = time.perf_counter()
        mamba, transformer = (
            bench_generation(m, **{**options, "batch_sizes": [batch]})
            for m in shape("generation_models", gpu)
        )
        (ours,), (theirs,) = mamba["results"], transformer["results"]

        def said(r, name):
            if r["oom"]:
                return f"{name} out of memory"
            return f"{name} {r['tokens_per_s']:,.0f} tokens/s (peak {gib(r['peak_memory_bytes'])})"

        ratio = (
            ""
            if ours["oom"] or theirs["oom"]
            else f"; Mamba {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x"
        )
        graphs = ", a CUDA graph a step" if mamba["cuda_graph"] else ""
        setup = f"prompt {options['prompt_len']}, {options['new_tokens']} new{graphs}"
        said_both = f"{said(ours, mamba['model'])}, {said(theirs, transformer['model'])}{ratio}"
        yield Row(f"generation batch {batch} ({setup})", "measured", said_both, time.perf_counter() - start)


def guarded(section: str, rows_of: Callable[[], Iterator[Row]], log: Path) -> Iterator[Row]:
    """A section's rows as each is measured, then, where it broke, one failed row naming the error
    (the traceback goes to ``log``): one broken part still leaves the rows before it and the other
    sections' measurements."""
    try:
        yield from rows_of()
    except Exception as e:
        with open(log, "a") as f:
            f.write(f"--- {section}\n{traceback.format_exc()}\n")
        yield Row(section, "failed", f"{type(e).__name__}: {e} ({log.name})")


def cuda_backend_missing(gpu: bool) -> str | None:
    """On a GPU, why the cuda backend cannot run (then no Mamba row is measured: it would time the
    Python-loop reference scan); else None."""
    if not gpu:
        return None
    return backends._BACKENDS["cuda"].why_not(torch.empty(0, device="cuda"))


def header(gpu: bool, command: str) -> str:
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({platform.processor() or platform.machine()})"
    mode = (
        "full (GPU)"
        if gpu
        else "CPU mode: the GPU parts skipped, the rest at tiny sizes (paths, not results)"
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    software = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    return f"Device: {device}; {software}; {mode}; `{command}`, {when}"


def markdown(rows: list[Row], gpu: bool, command: str) -> str:
    lines = [header(gpu, command), "", "| check | status | result | s |", "|---|---|---|---|"]
    for r in rows:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(f"| {r.check} | {r.status} | {r.result.replace('|', '/')} | {seconds} |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[Row], gpu: bool, command: str, out: Path) -> None:
    text = markdown(rows, gpu, command)
    records = json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    atomic_write(out / "gpu-check.md", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / "gpu-check.json", lambda tmp: Path(tmp).write_text(records))


SECTIONS = ("build", "backends", "families", "kernels", "generation", "training", "training-compiled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "results/gpu-check")
    parser.add_argument(
        "--wheels",
        type=Path,
        default=Path.home() / ".cache/seqarena/cuda-wheels",
        help="where the built wheels are kept between runs",
    )
    parser.add_argument("--command", default="make gpu-check", help="what ran this, for the table's header")
    parser.add_argument(
        "--only",
        type=lambda v: v.split(","),
        default=list(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all); "
        "a short lease can build in one call and measure in the next",
    )
    args = parser.parse_args()
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    log = args.out / "errors.log"
    rows = []

    def add(row: Row) -> None:
        """A row in, and the table written: a run cut short still leaves every row it measured."""
        rows.append(row)
        write_table(rows, gpu, args.command, args.out)
        seconds = "" if row.seconds is None else f" ({row.seconds:.1f} s)"
        print(f"gpu-check: {row.status}: {row.check}{seconds}", flush=True)

    write_table(rows, gpu, args.command, args.out)  # the device and software, before any row
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the C++ kernels (the cpp backend) compile, about a minute, while the CUDA ones build
        cpp_ready = pool.submit(backends._BACKENDS["cpp"].why_not, torch.empty(0))
        if "build" in args.only:
            add(build_kernels(args.out, args.wheels))
        cpp_ready.result()
    sections = {
        "backends": backend_rows,
        "families": functools.partial(family_rows, torch.device("cuda" if gpu else "cpu")),
        "kernels": functools.partial(kernel_rows, gpu),
        "generation": functools.partial(generation_rows, gpu),
        "training": functools.partial(training_rows, gpu, compile=False),
        "training-compiled": functools.partial(training_rows, gpu, compile=True),
    }
    missing = cuda_backend_missing(gpu)
    for section in [s for s in SECTIONS if s in args.only and s in sections]:
        if missing and section != "backends":
            add(Row(section, "failed", f"not measured: the cuda backend is unavailable ({missing})"))
        elif section != "training-compiled" or gpu:  # a CPU run checks the paths, not compilation
            for row in guarded(section, sections[section], log):
                add(row)
    print((args.out / "gpu-check.md").read_text())
    failed = [r.check for r in rows if r.status == "failed"]
    if failed:
        sys.exit(f"gpu-check: {len(failed)} failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
