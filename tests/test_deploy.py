"""The conda envs (envs/*.yaml) and their post-deploy scripts, short of conda itself.

These machines reach no conda channel, so `conda env create` never runs here. Everything
around it does: the env files parse and pin what pyproject.toml asks for, their pip sections
resolve together in a plain venv from the folder Snakemake copies the env files to, and the
post-deploy scripts run for real in a venv standing in for the new env.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
FIXTURES = Path(__file__).with_name("fixtures") / "cuda_build"


def env_file(name: str) -> dict:
    return yaml.safe_load((ENVS / f"{name}.yaml").read_text())


def conda_pins(env: dict) -> dict[str, str]:
    """{'cuda-nvcc': '12.6.85', ...} from the conda dependencies."""
    return dict(d.split("=", 1) for d in env["dependencies"] if isinstance(d, str))


def pip_section(env: dict) -> list[str]:
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


def pip_pins(env: dict) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, pip_section(env))}


def runtime_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_each_env_pins_every_runtime_dependency_exactly_within_pyprojects_bounds(name):
    env = env_file(name)
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert conda_pins(env)["python"] == "3.11.7"
    pins = pip_pins(env)
    for requirement in pins.values():  # no paths: Snakemake copies the file to .snakemake/conda/
        (spec,) = requirement.specifier
        assert spec.operator == "==" and requirement.url is None, requirement
    conda = conda_pins(env)
    for key, wanted in runtime_dependencies().items():
        if key in pins:
            assert pins[key].extras == wanted.extras, key
            version = next(iter(pins[key].specifier)).version
        else:
            assert key in conda, f"envs/{name}.yaml pins {key} neither in its pip section nor from conda"
            version = conda[key]
        assert wanted.specifier.contains(version), f"envs/{name}.yaml: {key}=={version} is outside {wanted}"


def test_the_two_envs_pin_the_same_version_of_every_package_they_share_but_torch():
    cpu, gpu = pip_pins(env_file("cpu")), pip_pins(env_file("gpu"))
    shared = cpu.keys() & gpu.keys() - {"torch"}  # a CPU build, and the CUDA 13.0 build the kernels need
    assert {k: str(cpu[k]) for k in shared} == {k: str(gpu[k]) for k in shared}
    assert set(cpu) - set(gpu) == {"ninja"}  # from conda in the GPU env (the builds use it)
    # what mamba-ssm imports (tilelang and its apache-tvm-ffi: for Mamba-3 MIMO), within its bounds
    assert set(gpu) - set(cpu) == {"triton", "einops", "tilelang", "apache-tvm-ffi"}


def declared_requirements(setup_py: str) -> dict[str, Requirement]:
    """install_requires of a pinned source's setup.py (the fixtures are the tags' own files)."""
    source = (FIXTURES / setup_py).read_text()
    listed = re.search(r"install_requires=\[(.*?)\]", source, re.S)[1]
    names = re.findall(r'^\s*"([^"]+)"', listed, re.M)  # commented-out lines start with #
    return {canonicalize_name(r.name): r for r in map(Requirement, names)}


def test_the_gpu_envs_torch_triton_and_nvcc_satisfy_what_each_pinned_package_declares():
    """torch's own Requires-Dist (fixtures/cuda_build/torch-<version>.requires.txt, from PyPI's
    metadata), mamba-ssm's and causal-conv1d's install_requires (their tags' setup.py): every
    package they name that the env installs is pinned within their bounds, and torch's CUDA major
    is nvcc's. mamba-ssm's quack-kernels serves its CuTe DSL kernels only, which it imports inside
    try/except ImportError: the env leaves it out (tests/test_cuda_emulation.py imports mamba_ssm
    without it)."""
    env = env_file("gpu")
    pins = {k: next(iter(r.specifier)).version for k, r in pip_pins(env).items()}
    conda = conda_pins(env)
    pins.update({k: v for k, v in conda.items() if k in ("ninja", "packaging")})
    requires_file = FIXTURES / f"torch-{pins['torch']}.requires.txt"
    assert requires_file.is_file(), f"record torch {pins['torch']}'s Requires-Dist in {requires_file}"
    lines = [line for line in requires_file.read_text().splitlines() if line and not line.startswith("#")]
    torch_requires = {canonicalize_name(r.name): r for r in map(Requirement, lines)}
    assert torch_requires["triton"].specifier.contains(pins["triton"])
    (toolkit,) = torch_requires["cuda-toolkit"].specifier
    assert (
        toolkit.version.split(".")[0]
        == conda["cuda-nvcc"].split(".")[0]
        == conda["cuda-version"].split(".")[0]
    )

    not_installed = {"quack-kernels"}
    for setup_py in ("mamba_ssm-2.3.2.post1.setup.py", "causal_conv1d-1.6.1.post4.setup.py"):
        declared = declared_requirements(setup_py)
        assert declared.keys() - not_installed <= pins.keys(), (setup_py, declared.keys() - pins.keys())
        for key in declared.keys() & pins.keys():
            assert declared[key].specifier.contains(pins[key]), (setup_py, key, pins[key], declared[key])
    assert not_installed <= declared_requirements("mamba_ssm-2.3.2.post1.setup.py").keys()


# Which conda-forge package ships a CUDA toolkit header, by its path under include/ (CUDA 12
# puts CCCL's cub/, thrust/, cuda/ and nv/ at the top, CUDA 13 under cccl/); the runtime's
# headers (cuda-cudart-dev) are the rest of include/.
FOLDER_PACKAGES = {
    "cccl": "cuda-cccl",
    "cub": "cuda-cccl",
    "thrust": "cuda-cccl",
    "cuda": "cuda-cccl",
    "nv": "cuda-cccl",
    "crt": "cuda-nvcc",
    "nvtx3": "cuda-nvtx-dev",
}
FILE_PACKAGES = {
    "cuda.h": "cuda-driver-dev",
    "cublas": "libcublas-dev",
    "cusparse": "libcusparse-dev",
    "cusolver": "libcusolver-dev",
    "curand": "libcurand-dev",
}


def conda_package_of(header: str) -> str:
    if "/" in header:
        return FOLDER_PACKAGES[header.split("/")[0]]
    return next((p for prefix, p in FILE_PACKAGES.items() if header.startswith(prefix)), "cuda-cudart-dev")


def test_the_gpu_env_holds_a_package_for_every_toolkit_header_the_source_builds_include():
    """toolkit_headers.txt is what `nvcc -M` listed for every source file of both pinned builds
    (benchmarks/cuda_headers.sh); the conda package that ships each must be in envs/gpu.yaml."""
    headers = (FIXTURES / "toolkit_headers.txt").read_text().split()
    assert "cuda_runtime.h" in headers and any(h.startswith("cccl/cub/") for h in headers)
    needed = {conda_package_of(h) for h in headers}
    assert needed == {"cuda-cccl", "cuda-nvcc", "cuda-driver-dev", "cuda-cudart-dev"}
    missing = needed - set(conda_pins(env_file("gpu")))
    assert not missing, f"envs/gpu.yaml lacks {sorted(missing)}"
    assert conda_package_of("cusparse.h") == "libcusparse-dev"  # what torch's CUDAContext.h would need


def snakemakes_copy(tmp_path: Path) -> Path:
    """Where Snakemake puts an env file and its post-deploy script before using them."""
    folder = tmp_path / "workdir/.snakemake/conda"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_each_envs_pip_section_resolves_in_a_plain_venv(name, tmp_path):
    """pip's own resolver, against the package index, from the folder of Snakemake's copy."""
    folder = snakemakes_copy(tmp_path)
    requirements = folder / "pip-section.txt"
    requirements.write_text("\n".join(pip_section(env_file(name))) + "\n")
    venv = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    report = tmp_path / "report.json"
    resolve = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin/python"),
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "-r",
        requirements.name,
    ]
    done = subprocess.run(resolve, cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {
        canonicalize_name(p["metadata"]["name"]): p["metadata"]["version"]
        for p in json.loads(report.read_text())["install"]
    }
    for key, requirement in pip_pins(env_file(name)).items():
        assert requirement.specifier.contains(chosen[key]), (key, chosen[key])


@pytest.fixture(scope="module")
def stand_in_env(tmp_path_factory) -> Path:
    """A venv standing in for a new conda env: its own python, and the pinned packages, pip and
    setuptools among them (this suite's, through a .pth file), but no seqarena of its own."""
    venv = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "suite-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    assert not list(site.glob("seqarena*"))
    return venv


def run_post_deploy(script: str, venv: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    """As Snakemake runs it: a copy of the script, in the env, from the working directory."""
    copy = cwd / f"0123abcd_.{script}"
    shutil.copy(ENVS / script, copy)
    environ = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "SEQARENA_WORKFLOW_DIR": str(REPO),
    }
    environ.pop("PYTHONPATH", None)
    run = ["bash", str(copy)]
    return subprocess.run(
        run, cwd=cwd.parents[1], env={**environ, **env}, capture_output=True, text=True, timeout=600
    )


def installed_from(venv: Path) -> str:
    """The source a venv's own seqarena was installed from (its direct_url.json)."""
    (dist,) = next((venv / "lib").glob("python3*/site-packages")).glob("seqarena-*.dist-info")
    return json.loads((dist / "direct_url.json").read_text())["url"]


def test_the_cpu_post_deploy_script_installs_seqarena_from_the_workflow_folder(stand_in_env, tmp_path):
    done = run_post_deploy("cpu.post-deploy.sh", stand_in_env, snakemakes_copy(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert installed_from(stand_in_env) == REPO.as_uri()
    help_text = subprocess.run([str(stand_in_env / "bin/seqarena"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "train" in help_text.stdout

    unset = {k: v for k, v in os.environ.items() if k != "SEQARENA_WORKFLOW_DIR"}
    missing = subprocess.run(
        ["bash", str(ENVS / "cpu.post-deploy.sh")], env=unset, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "SEQARENA_WORKFLOW_DIR: is unset" in missing.stderr


def source_tarballs(folder: Path) -> Path:
    """The two tags' tarballs as GitHub names them, holding the real setup.py files (and no
    csrc/: nothing may compile)."""
    for name, version, setup_py in [
        ("causal-conv1d", "1.6.1.post4", "causal_conv1d-1.6.1.post4.setup.py"),
        ("mamba", "2.3.2.post1", "mamba_ssm-2.3.2.post1.setup.py"),
    ]:
        with tarfile.open(folder / f"{name}-{version}.tar.gz", "w:gz") as tar:
            tar.add(FIXTURES / setup_py, arcname=f"{name}-{version}/setup.py")
    return folder


def test_the_gpu_post_deploy_script_installs_seqarena_then_refuses_a_cpu_torch_before_compiling(
    stand_in_env, tmp_path
):
    """This suite's torch is a CPU build: the build must stop at the toolchain check, naming why,
    after installing seqarena and before any compiler runs (the full build: benchmarks/cuda_build.sh)."""
    cwd = snakemakes_copy(tmp_path)
    sources = source_tarballs(tmp_path)
    done = run_post_deploy(
        "gpu.post-deploy.sh", stand_in_env, cwd, SEQARENA_CUDA_SOURCES=str(sources), SEQARENA_CUDA_ARCHS="90"
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert installed_from(stand_in_env) == REPO.as_uri()
    assert "CUDA build of causal-conv1d-1.6.1.post4 refused before compiling" in output, output[-3000:]
    if shutil.which("nvcc"):
        assert re.search(r"torch is a CPU build \(no CUDA\) and nvcc is CUDA \d+\.\d+", output), output[
            -3000:
        ]
    else:
        assert "nvcc is not on PATH" in output, output[-3000:]
    assert not re.search(r"^built (causal_conv1d|mamba_ssm)|Building wheel for (causal|mamba)", output, re.M)


@pytest.mark.skipif(shutil.which("conda") is None, reason="no conda here: the envs cannot be created")
def test_snakemake_plans_the_conda_envs_it_would_create(tmp_path):
    plan = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--use-conda",
        "--conda-create-envs-only",
        "-n",
    ]
    done = subprocess.run(plan, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
