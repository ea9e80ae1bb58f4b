"""The Snakemake pipeline: lint, format, a real run of every stage, reruns, the UI, a kill, bad configs."""

import csv
import json
import os
import pty
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
import transformers
import yaml

from conftest import KERNEL_ROWS, free_port, wait_until_serving, write_pipeline_config
from seqarena.models import SIZES, from_pretrained

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # as an activated venv has it
MODELS = ["mamba-tiny", "transformer-tiny", "mamba3-tiny"]  # write_pipeline_config's
TRACKING = "sqlite:///{results}/mlflow.db?timeout=60&check_same_thread=false"


def snakemake(*args, cwd, timeout=900):
    """The real snakemake, with this environment's `seqarena` on PATH."""
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's own 'Job stats' table: rule -> number of jobs it ran (or, dry, would run)."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    counts = dict(line.split() for line in table if line.strip())
    counts.pop("total")
    return {rule: int(n) for rule, n in counts.items()}


def test_lint_and_format_are_clean():
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One real run of the whole DAG on a tiny config: (working dir, config file, snakemake output).

    Its folder has a space and its tracking URI an `&`: every path and config string reaches the
    shell quoted."""
    cwd = tmp_path_factory.mktemp("pipe line")
    config = write_pipeline_config(cwd, tracking_uri=TRACKING.format(results=cwd / "results"))
    done = snakemake("--configfile", str(config), "--cores", "2", cwd=cwd)
    assert done.returncode == 0, done.stderr[-4000:]
    return cwd, config, done.stdout + done.stderr


def test_every_stage_writes_its_contract(pipeline):
    cwd, _, output = pipeline
    results = cwd / "results"
    assert job_counts(output) == {
        "all": 1,
        "kernels": 1,
        "prefetch": 1,
        "download": 1,
        "tokenize": 1,
        "train": 3,
        "bench_kernels": 1,
        "bench_generation": 3,
        "bench_training": 3,
        "evaluate": 3,
        "synthetic_task": 3,
        "scaling": 1,
        "report": 1,
        "export_hf": 2,  # transformers has no Mamba-3 class
    }
    # the last lines say where the report is and how to browse the runs (a command to copy: quoted)
    report_line = (
        f"The report: {results}/reports/report.html. The runs, in MLflow's UI: seqarena ui --results"
    )
    assert f"{report_line} '{results}' --experiment seqarena" in "\n".join(output.strip().splitlines()[-5:])
    prefetched = json.loads((results / "hub/prefetched.json").read_text())  # local tasks: loaded, not fetched
    assert prefetched == {"tokenizers": {}, "models": {}, "tasks": ["local_piqa", "piqa_embedded"]}
    assert "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 seqarena eval" in output
    env = json.loads((results / "env/kernels.json").read_text())
    assert env["backends"]["cpp"]["passed"] and env["backends"]["cpp"]["max_relative_error"] < 1e-3
    assert not env["backends"]["cuda"]["available"] and "CUDA" in env["backends"]["cuda"]["reason"]
    assert env["tracking_uri"] == TRACKING.format(results=results) and env["tracking"] == "sqlite file"

    meta = json.loads((results / "data/shakespeare/meta.json").read_text())
    assert meta["vocab_size"] == 512 and meta["train_tokens"] > 100_000
    for model in MODELS:
        summary = json.loads((results / f"train/{model}/summary.json").read_text())
        assert summary["steps"] == 4 and summary["final_val_loss"] < 7.0  # below ln(512) = 6.24 + slack
        if not model.startswith("transformer"):
            assert summary["scan_backend"] == "cpp"
        generation = json.loads((results / f"bench/generation/{model}.json").read_text())
        assert [r["batch"] for r in generation["results"]] == [1, 2]
        assert all(r["tokens_per_s"] > 0 for r in generation["results"])
        training = json.loads((results / f"bench/training/{model}.json").read_text())
        assert training["steps"] == 2 and training["tokens_per_s"] > 0
        evaluation = json.loads((results / f"eval/{model}.json").read_text())
        assert 0.0 <= evaluation["results"]["local_piqa"]["acc"]["value"] <= 1.0
        assert evaluation["n_samples"]["local_piqa"]["effective"] == 12
        assert evaluation["n_samples"]["piqa_embedded"]["effective"] == 12  # the task the package ships
        for stage in ("train", "bench/generation", "bench/training", "eval"):
            assert (results / f"logs/{stage}/{model}.log").stat().st_size > 0
            assert (results / f"benchmarks/{stage}/{model}.tsv").read_text().startswith("s\t")
    assert not (results / "hf/mamba3-tiny").exists()  # transformers has no Mamba-3 class
    for model in ("mamba-tiny", "transformer-tiny"):  # exported as transformers folders
        exported = transformers.AutoModelForCausalLM.from_pretrained(results / f"hf/{model}").eval()
        trained = from_pretrained(results / f"train/{model}").eval()
        ids = torch.randint(0, 512, (1, 24))
        with torch.no_grad():
            expected = trained(ids)[..., :512]
            assert (exported(ids).logits - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert (results / f"logs/export/{model}.log").stat().st_size > 0
    with open(results / "bench/kernels.csv") as f:
        rows = list(csv.DictReader(f))
    for op, backend in KERNEL_ROWS:
        lengths = [
            int(r["seq_len"]) for r in rows if (r["op"], r["backend"], r["pass"]) == (op, backend, "fwd")
        ]
        assert lengths == [32, 64, 128], (op, backend)
    html = (results / "reports/report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5  # loss, scaling, generation, kernels, synthetic
    assert "local_piqa" in html and "All inputs present." in html
    assert re.search(
        r"scan backend cpp</td>\s*<td [^>]*>passed, max relative error \d\.\de-\d\d on cpu", html
    )
    assert sorted(p.name for p in (results / "reports/figures").glob("*.png")) == [
        "generation.png",
        "kernels.png",
        "loss_curves.png",
        "scaling.png",
        "synthetic.png",
    ]
    for task in ("selective_copying", "induction_heads", "mqar"):
        result = json.loads((results / f"synthetic/{task}/mamba-d16/seed0.json").read_text())
        assert result["steps"] == 4 and 0.0 <= result["final_accuracy"] <= 1.0
    induction = json.loads((results / "synthetic/induction_heads/mamba-d16/seed0.json").read_text())
    assert sorted(induction["accuracy_by_length"]) == ["16", "64"]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on ``port``, from /proc/net/tcp (state 0A = LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_ui_shows_one_run_per_model_with_params_history_and_eval(pipeline):
    cwd, _, _ = pipeline
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "seqarena"), "ui", "--results", str(cwd / "results"), "--port", str(port)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health", server, 90, "mlflow ui")
        experiment = _get(f"{api}/experiments/get-by-name?experiment_name=seqarena")["experiment"]
        assert _listening_addresses(port) == {"127.0.0.1"}  # loopback only, as asked by default
        # the address printed opens the runs table, not MLflow 3's GenAI traces overview
        runs_page = f"#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning"
        assert server.stdout.readline().rstrip().endswith(f"http://127.0.0.1:{port}/{runs_page}")
        serving = [p for p in psutil.Process(server.pid).children(recursive=True)]
        assert not [p for p in serving if "huey" in " ".join(p.cmdline())]  # no GenAI job runner
        assert len(serving) <= 2, [p.cmdline() for p in serving]  # one worker (MLflow's default: 4)
        tags = {t["key"]: t["value"] for t in experiment["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # lands on the runs table
        runs = _get(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        by_model = {}
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            by_model.setdefault(tags.get("seqarena.model_id"), []).append(run)
        assert sorted(by_model) == sorted(MODELS)  # the kernel benchmark is no model: seqarena-kernels
        kernels = _get(f"{api}/experiments/get-by-name?experiment_name=seqarena-kernels")["experiment"]
        assert len(_get(f"{api}/runs/search", {"experiment_ids": [kernels["experiment_id"]]})["runs"]) == 1
        assert {run["info"]["status"] for run in runs} == {"FINISHED"}  # every stage ended what it opened
        for model in MODELS:
            (run,) = by_model[model]
            artifacts = f"{api}/artifacts/list?run_id={run['info']['run_id']}&path="
            listed = {
                folder: [f["path"] for f in _get(artifacts + folder).get("files", [])]
                for folder in ("bench/generation", "bench/training", "eval")
            }
            assert listed == {folder: [f"{folder}/{model}.json"] for folder in listed}  # one folder a stage
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params["train.model"] == model and params["train.steps"] == "4"
            config = json.loads((cwd / f"results/train/{model}/config.json").read_text())
            assert params["model.d_model"] == str(config["d_model"])  # the architecture, resolved
            assert params["resolved.peak_lr"] == str(SIZES[model.split("-")[0]]["tiny"].lr)  # train.lr 0
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert 0.0 <= metrics["eval/local_piqa/acc"] <= 1.0
            assert metrics["bench/generation/tokens_per_s/batch_1"] > 0  # a batch size is no step
            summary = json.loads((cwd / f"results/train/{model}/summary.json").read_text())
            assert metrics["final/train_seconds"] == pytest.approx(summary["wall_seconds"])
            history = _get(f"{api}/metrics/get-history?run_id={run['info']['run_id']}&metric_key=train/loss")
            assert sorted(m["step"] for m in history["metrics"]) == [1, 2, 3, 4]
        registered = _get(f"{api}/registered-models/search")["registered_models"]
        assert sorted(m["name"] for m in registered) == ["mamba-tiny", "transformer-tiny"]
        for model in ("mamba-tiny", "transformer-tiny"):  # one version, linked to the training run
            (version,) = _get(f"{api}/model-versions/search?filter=name%3D%27{model}%27")["model_versions"]
            assert version["run_id"] == by_model[model][0]["info"]["run_id"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_second_run_does_nothing_and_an_eval_change_reruns_only_eval_and_report(pipeline):
    cwd, config, _ = pipeline
    again = snakemake("--configfile", str(config), "--cores", "2", cwd=cwd)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    report_before = (cwd / "results/reports/report.html").stat().st_mtime_ns
    summary_before = (cwd / "results/train/mamba-tiny/summary.json").read_bytes()

    changed = yaml.safe_load(config.read_text())
    changed["eval"]["limit"] = 6
    config.write_text(yaml.safe_dump(changed))
    rerun = snakemake("--configfile", str(config), "--cores", "2", cwd=cwd)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert job_counts(rerun.stdout + rerun.stderr) == {"evaluate": 3, "report": 1, "all": 1}
    evaluation = json.loads((cwd / "results/eval/mamba-tiny.json").read_text())
    assert evaluation["n_samples"]["local_piqa"]["effective"] == 6
    assert (cwd / "results/reports/report.html").stat().st_mtime_ns > report_before
    assert (cwd / "results/train/mamba-tiny/summary.json").read_bytes() == summary_before


def test_a_checkout_moved_elsewhere_plans_nothing_and_its_runs_keep_their_artifacts(tmp_path):
    """Results survive a move: the jobs' commands name the tracking store relative to the working
    directory, and the store's artifact locations follow the database."""
    from seqarena.tracking.store import client_for

    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    write_pipeline_config(first, results="results", models=["transformer-tiny"])
    target = "results/train/transformer-tiny/summary.json"
    done = snakemake("--configfile", "test.yaml", "--cores", "2", target, cwd=first)
    assert done.returncode == 0, done.stderr[-4000:]
    shutil.copytree(first, moved, symlinks=True)  # file times kept, as cp -a and rsync -a keep them
    shutil.rmtree(first)
    for dry in (["-n"], []):  # planned, then run: neither reruns a job nor refuses the folder
        again = snakemake("--configfile", "test.yaml", "--cores", "2", *dry, target, cwd=moved)
        assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stderr[
            -3000:
        ]
    client = client_for(f"sqlite:///{moved}/results/mlflow.db")
    experiment = client.get_experiment_by_name("seqarena")
    assert experiment.artifact_location == (moved / "results/mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith(experiment.artifact_location + "/")
    fetched = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert Path(fetched).read_bytes() == (moved / target).read_bytes()


def test_a_results_folder_refuses_the_results_of_other_config_files(pipeline):
    cwd, config, _ = pipeline
    other = cwd / "other.yaml"
    other.write_text(config.read_text())
    before = sorted(p.relative_to(cwd) for p in (cwd / "results").rglob("*"))
    done = snakemake("--configfile", str(other), "--cores", "1", "--forcerun", "report", cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    default = os.path.relpath(REPO / "config/config.yaml", cwd)  # relative: a moved folder keeps it
    recorded, this_run = (sorted([default, c.name]) for c in (config, other))
    assert f"holds the results of {recorded}" in output and f"this run's config is {this_run}" in output
    assert sorted(p.relative_to(cwd) for p in (cwd / "results").rglob("*")) == before


def test_a_quick_run_with_config_overrides_is_refused_the_default_results_and_runs_in_its_own(pipeline):
    """The README's quick run (`--config train=... models=...`) changes what a model is: into the
    results it would overwrite it is refused, naming the overrides; with a results folder of its
    own it runs, and the default results stay as they were."""
    cwd, config, _ = pipeline
    before = {p: p.stat().st_mtime_ns for p in (cwd / "results").rglob("*") if p.is_file()}
    quick = [
        "--configfile",
        str(config),
        "--config",
        'train={"steps": 2}',
        "models=[mamba-tiny]",
        "--cores",
        "1",
    ]
    refused = snakemake(*quick, cwd=cwd)
    assert refused.returncode != 0
    assert "--config train.steps=2" in refused.stdout + refused.stderr
    assert "--config results=results/other" in refused.stdout + refused.stderr
    done = snakemake("data", *quick[:-2], "results=quick", *quick[-2:], cwd=cwd)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (cwd / "quick/data").is_dir() and "--config train.steps=2" in (
        cwd / "quick/configfiles.txt"
    ).read_text()
    assert {p: p.stat().st_mtime_ns for p in (cwd / "results").rglob("*") if p.is_file()} == before


def test_a_config_that_needs_an_unreachable_hub_fails_before_any_job_naming_the_keys(tmp_path):
    config = write_pipeline_config(
        tmp_path,
        data={
            "wiki": {
                "source": {"kind": "hf", "path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1"},
                "tokenizer": {"kind": "bpe", "vocab_size": 512},
            }
        },
        train={"dataset": "wiki", "steps": 4},
    )
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there: an unreachable hub
    start = time.monotonic()
    done = subprocess.run(
        [
            str(BIN / "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(config),
            "--cores",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and time.monotonic() - start < 120
    assert "needs the Hugging Face hub, which does not answer" in output
    assert "data.wiki.source.path: Salesforce/wikitext" in output and "config/config.yaml" in output
    assert "eval.tasks" not in output  # local_piqa is a local task
    assert not (tmp_path / "results").exists()  # no job ran, nothing recorded


def test_a_failed_jobs_log_is_printed_on_the_terminal(tmp_path):
    missing = tmp_path / "no-such-corpus.txt"
    config = write_pipeline_config(
        tmp_path,
        data={"mine": {"source": {"kind": "local", "path": str(missing)}, "tokenizer": {"kind": "byte"}}},
        train={"dataset": "mine"},
    )
    done = snakemake("--configfile", str(config), "--cores", "1", "data", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"local data source {str(missing)!r}: no such file" in output  # from the job's log file
    assert "logs/download/mine.log" in output


def test_only_the_families_transformers_has_a_class_for_are_exported(tmp_path):
    config = write_pipeline_config(
        tmp_path, models=["mamba-tiny", "hybrid-tiny", "mamba_lti-tiny", "mamba2-tiny"]
    )
    done = snakemake("export_all", "--configfile", str(config), "-n", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert job_counts(output)["export_hf"] == 2  # Mamba and Mamba-2; no class for hybrids or mamba_lti
    exports = [line for line in output.splitlines() if "seqarena export --format hf" in line]
    assert len(exports) == 2 and any("train/mamba2-tiny" in line for line in exports)
    assert not any("hybrid" in line or "mamba_lti" in line for line in exports)


def test_make_pipeline_draws_its_live_view_on_a_terminal_and_plain_lines_into_a_file(tmp_path):
    # --no-print-directory: under `make test` this make is a sub-make, which names its directory last
    command = subprocess.run(
        ["make", "-n", "--no-print-directory", "pipeline"], cwd=REPO, capture_output=True, text=True
    )
    command = command.stdout.splitlines()[-1]
    assert "--configfile" not in command  # the Snakefile loads the default: nothing "extended" to say
    show_logger = command.split("PATH=")[0] + ' echo "[$logger]"'  # the recipe's choice of logger
    piped = subprocess.run(["bash", "-c", show_logger], capture_output=True, text=True).stdout
    primary, replica = pty.openpty()
    subprocess.run(["bash", "-c", show_logger], stdout=replica, check=True)
    os.close(replica)
    assert piped == "[]\n" and os.read(primary, 100) == b"[--logger rich]\r\n"
    done = snakemake("-n", "--logger", "rich", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert re.search(r"total\s+34", output)  # the rich logger's job table of the default DAG


def test_nested_config_overrides_from_the_command_line_are_typed_by_the_schema(tmp_path):
    config = write_pipeline_config(tmp_path)
    done = snakemake(
        "--configfile",
        str(config),
        "--config",
        'train={"steps": 5, "lr": "1e-3"}',
        "-n",
        "-p",
        "train_all",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "--steps 5 " in output and "--lr 0.001 " in output and "--seq-len 64 " in output  # merged, typed
    bad = snakemake("--configfile", str(config), "--config", 'train={"steps": "five"}', "-n", cwd=tmp_path)
    assert bad.returncode != 0 and "'five' is not of type 'integer'" in bad.stdout + bad.stderr


def job_threads(output: str) -> dict[str, int]:
    """A dry run's threads per job ('rule train:' ... 'wildcards: model=x' ... 'threads: 2'; a job
    of one thread prints no threads line): {"train model=x": 2, ...}."""
    jobs = {}
    for block in re.findall(r"^rule (\w+):\n(.*?)^Shell command:", output, re.S | re.M):
        wildcards = re.search(r"^    wildcards: (.*)$", block[1], re.M)
        threads = re.search(r"^    threads: (\d+)$", block[1], re.M)
        name = block[0] + (f" {wildcards[1]}" if wildcards else "")
        jobs[name] = int(threads[1]) if threads else 1
    return jobs


def test_jobs_take_one_thread_each_and_the_benchmarks_the_machine_unless_the_config_says(tmp_path):
    """One thread a job packs the small CPU jobs side by side; resources.<stage>.<size>.threads
    changes it for one stage and size."""
    (tmp_path / "threads.yaml").write_text(
        "resources: {train: {mini: {threads: 3}}, eval: {default: {threads: 2}}}\n"
    )
    done = snakemake(
        "-n",
        "--cores",
        "4",
        "--configfile",
        str(REPO / "config/config.yaml"),
        str(tmp_path / "threads.yaml"),
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    threads = job_threads(output)
    assert threads["train model=mamba-tiny"] == 1 and threads["train model=mamba-mini"] == 3
    assert threads["evaluate model=transformer-tiny"] == 2
    assert threads["bench_training model=mamba-tiny"] == 4  # asks for 8, capped at --cores
    rest = {job: n for job, n in threads.items() if not job.startswith(("train ", "evaluate ", "bench_"))}
    assert len(rest) > 10 and set(rest.values()) == {1}, rest


def test_train_seeds_repeat_every_models_training_as_runs_of_their_own(tmp_path):
    config = write_pipeline_config(tmp_path)
    done = snakemake(
        "--configfile",
        str(config),
        "--config",
        'train={"seeds": [0, 1, 2]}',
        "-n",
        "-p",
        "train_all",
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    counts = job_counts(output)
    models = len(yaml.safe_load(config.read_text())["models"])
    assert counts["train"] == models and counts["train_seed"] == 2 * models  # seed 0 is each model's own
    for seed in (1, 2):
        assert f"--out {tmp_path}/results/train/mamba-tiny/seed{seed} " in output
        assert f"--seed {seed} --run-name mamba-tiny/seed{seed} " in output
    assert "--seeds" not in output  # a driver key, not a trainer flag


def test_the_synthetic_cpu_config_plans_three_seeds_of_each_papers_row(tmp_path):
    plan = subprocess.run(["make", "-n", "synthetic-cpu"], cwd=REPO, capture_output=True, text=True)
    assert "seqarena report --results" in plan.stdout
    done = snakemake(
        "synthetic", "-n", "-p", "--configfile", str(REPO / "config/synthetic-cpu.yaml"), cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert job_counts(output) == {"kernels": 1, "synthetic_task": 30, "synthetic": 1}
    runs = re.findall(r"seqarena synthetic --task (\w+) --arch (\w+) --d-model (?:64|32) --seed (\d)", output)
    archs = {
        "selective_copying": ["mamba", "mamba_lti"],
        "induction_heads": ["mamba", "mamba3"],
        "mqar": ["mamba", "mamba2", "mamba3", "transformer"],
        "parity": ["mamba2", "mamba3"],
    }
    assert sorted(runs) == sorted((t, a, s) for t, names in archs.items() for a in names for s in "012")
    assert "--length 256 --vocab 16 --n-data 16 " in output  # the selective-copying shape
    assert "--test-lengths 256,512,1024,4096,16384,65536 " in output
    # a configured 0 reaches the command line (0 == False in Python; it was once dropped, and the
    # runs took the default decay of 0.1)
    heads = [line for line in output.splitlines() if "--task induction_heads --arch mamba " in line]
    assert len(heads) == 3 and all("--weight-decay 0 " in line for line in heads), heads


def test_the_scaling_cpu_config_plans_four_sizes_a_family_by_the_papers_recipe_on_the_stdlib(tmp_path):
    plan = subprocess.run(["make", "-n", "scaling-cpu"], cwd=REPO, capture_output=True, text=True)
    assert "seqarena report --results results/scaling-cpu" in plan.stdout
    done = snakemake(
        "scaling", "-n", "-p", "--configfile", str(REPO / "config/scaling-cpu.yaml"), cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert job_counts(output) == {
        "download": 1,
        "prefetch": 1,
        "tokenize": 1,
        "kernels": 1,
        "train": 16,
        "train_seed": 16,
        "scaling": 1,
    }
    assert "seqarena data download --kind python_stdlib --out" in output
    commands = [line for line in output.splitlines() if "seqarena train --model" in line]
    recipe = r"seqarena train --model (\w+)-(\w+) .*--steps 0 --tokens 0 .*--min-lr 1e-05 "
    own = [re.search(recipe, line).groups() for line in commands if "--run-name" not in line]
    families, sizes = ("mamba", "mamba2", "mamba3", "transformer"), ["micro", "tiny", "compact", "mini"]
    assert sorted(own) == sorted((f, s) for f in families for s in sizes)
    # train.by_size's seeds: the two smallest sizes again at seeds 1 and 2, with the same recipe
    repeats = [
        re.search(recipe + r".*--seed (\d) --run-name", line).groups()
        for line in commands
        if "--run-name" in line
    ]
    assert sorted(repeats) == sorted((f, s, seed) for f in families for s in sizes[:2] for seed in "12")
    assert "--seeds" not in output  # a driver key, not a trainer flag
    assert "--fixed-token" not in output  # 20 tokens per parameter: a compute-optimal ladder


def test_a_synthetic_task_can_name_its_own_architectures(tmp_path):
    config = write_pipeline_config(tmp_path)
    only = 'synthetic={"tasks": {"mqar": {"archs": ["transformer_abs", "mamba_lti"]}}}'
    done = snakemake("--configfile", str(config), "--config", only, "-n", "-p", "synthetic", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    runs = sorted(re.findall(r"seqarena synthetic --task (\w+) --arch (\w+)", output))
    assert runs == [
        ("induction_heads", "mamba"),
        ("mqar", "mamba_lti"),
        ("mqar", "transformer_abs"),
        ("selective_copying", "mamba"),
    ]
    assert "--archs" not in output


def test_a_synthetic_task_sets_options_for_one_architecture_over_its_own(tmp_path):
    """Table 11's attention wants its own rate: by_arch overrides the task's options for one arch,
    typed by the schema from the command line too."""
    config = write_pipeline_config(tmp_path)
    override = (
        'synthetic={"archs": ["mamba", "transformer"], "tasks": {"mqar": {"d_model": [8], "lr": 0.003,'
        ' "steps": 9, "by_arch": {"transformer": {"lr": "2.0e-4", "batch": "4"}}}}}'
    )
    done = snakemake("--configfile", str(config), "--config", override, "-n", "-p", "synthetic", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    commands = dict(re.findall(r"seqarena synthetic --task mqar --arch (\w+) (.*)", output))
    assert "--lr 0.003 " in commands["mamba"] and "--batch" not in commands["mamba"]
    assert "--lr 0.0002 " in commands["transformer"] and "--batch 4 " in commands["transformer"]
    assert "--steps 9 " in commands["mamba"] and "--steps 9 " in commands["transformer"]
    assert not any("--by-arch" in command for command in commands.values())


def test_snakemake_killed_during_training_resumes_and_takes_nothing_half_done(tmp_path):
    config = write_pipeline_config(
        tmp_path,
        models=["mamba-tiny"],
        train={
            "dataset": "shakespeare",
            "steps": 30,
            "batch_tokens": 512,
            "micro_batch": 4,
            "seq_len": 64,
            "eval_interval": 10,
            "ckpt_interval": 10,
        },
    )
    args = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config)]
    first = subprocess.Popen(
        [*args, "--cores", "2", "train_all"],
        cwd=tmp_path,
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "results/train/mamba-tiny"
    deadline = time.monotonic() + 300
    while not list((out / "ckpt").glob("step_*.pt")):
        assert time.monotonic() < deadline and first.poll() is None, "training never wrote a checkpoint"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # snakemake and its job, mid-training
    first.wait()
    assert not (out / "summary.json").exists()

    refused = subprocess.run(
        [*args, "--cores", "2", "train_all"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode != 0 and "--unlock" in refused.stderr  # the killed run's lock stays
    assert subprocess.run([*args, "--unlock"], cwd=tmp_path, env=ENV, capture_output=True).returncode == 0
    resumed = subprocess.run(  # profiles/default, the workflow profile, has rerun-incomplete
        [*args, "--cores", "2", "train_all"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert re.search(
        r"resuming from .*step_\d+\.pt at step [1-9]",
        (tmp_path / "results/logs/train/mamba-tiny.log").read_text(),
    )
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 30 and [r["step"] for r in rows if "loss" in r] == list(range(1, 31))


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory, slurm_profile) -> str:
    """`snakemake -n` of config/paper.yaml through profiles/slurm: the cluster run as planned."""
    cwd = tmp_path_factory.mktemp("paper")
    done = snakemake(
        "-n",
        "--workflow-profile",
        str(slurm_profile),
        "--cores",
        "64",  # a dry run caps each job's threads at it
        "--configfile",
        str(REPO / "config/paper.yaml"),
        cwd=cwd,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not (cwd / "results").exists()
    return output


def test_slurm_profile_plans_the_paper_dag(paper_plan):
    output = paper_plan
    assert job_counts(output) == {
        "prefetch": 1,
        "download": 1,
        "tokenize": 1,
        "kernels": 1,
        "train": 10,
        "bench_kernels": 1,
        "bench_generation": 10,
        "bench_training": 10,
        "evaluate": 10,
        "evaluate_pretrained": 10,
        "export_hf": 10,
        "synthetic_task": 20,
        "scaling": 1,
        "report": 1,
        "all": 1,  # four archs: mamba_lti, transformer_abs
    }
    # the 2.8B model trains on 8 GPUs with torchrun inside its allocation; the 130M one on one GPU
    assert "seqarena launch --nodes 1 --nproc-per-node 8 -- train --model mamba-2.8b" in output
    threads = job_threads(output)  # 8 CPUs per GPU
    assert threads["train model=mamba-2.8b"] == 64 and threads["train model=mamba-130m"] == 8
    # every GPU job runs on GPUs of its own; published Mamba checkpoints get the GPT-NeoX tokenizer
    assert "seqarena gpus --count 1 -- seqarena train --model mamba-130m" in output
    assert "seqarena gpus --count 8 -- seqarena launch" in output
    assert re.search(
        r"seqarena eval --model state-spaces/mamba-130m .*--tokenizer EleutherAI/gpt-neox-20b", output
    )
    assert re.search(r"seqarena eval --model results/paper/train/mamba-130m ", output)  # its own folder
    assert not re.search(r"seqarena eval --model results/paper/train/.*--tokenizer", output)
    # what the jobs on compute nodes read from the hub is fetched first, on the submit host
    prefetch = output.split("rule prefetch:", 1)[1].split("Shell command: ", 1)[1].splitlines()[0]
    assert "--tokenizers EleutherAI/gpt-neox-20b --models " in prefetch  # once, for data and eval
    assert "state-spaces/mamba-130m" in prefetch and "EleutherAI/pythia-2.8b" in prefetch
    assert "--tasks lambada_openai,hellaswag,piqa,arc_easy,arc_challenge,winogrande" in prefetch
    offline = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
    assert (
        f"{offline}seqarena data tokenize" in output
        and f"{offline}seqarena gpus --count 1 -- seqarena eval" in output
    )
    assert "memory:" not in output  # each size's recipe fits the 80 GB GPUs it names, by estimate
    # Table 1's and Table 11's constant rates reach the synthetic commands: warmup 0 (and no decay)
    for task in ("selective_copying", "induction_heads"):
        runs = [line for line in output.splitlines() if f"seqarena synthetic --task {task} " in line]
        assert runs and all("--warmup 0 " in run and "--min-lr-ratio 1 " in run for run in runs), task
    heads = [line for line in output.splitlines() if "seqarena synthetic --task induction_heads " in line]
    assert all("--weight-decay 0 " in line for line in heads)


def test_a_training_job_past_its_gpus_memory_is_named_before_submission(tmp_path, slurm_profile):
    """At 24 GB a GPU, the paper's 2.8B recipe (FSDP on 8, checkpointed) does not fit; its 130M does."""
    done = snakemake(
        "-n",
        "--workflow-profile",
        str(slurm_profile),
        "--configfile",
        str(REPO / "config/paper.yaml"),
        "--config",
        "gpu_memory_gb=24",
        cwd=tmp_path,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(
        r"memory: mamba-2\.8b: training needs about \d+ GB per GPU \(micro_batch 8 x seq_len 2048, "
        r"8 process\(es\), fsdp, activation_checkpointing True\), more than 90% of gpu_memory_gb 24",
        output,
    )
    assert "mamba-130m:" not in output


def _fields(line: str) -> dict[str, str]:
    """ "a=1, b=x" -> {"a": "1", "b": "x"}."""
    return dict(item.split("=", 1) for item in line.split(", ") if item)


def planned_jobs(output: str) -> list[dict]:
    """Each job of a dry run with its shell command: rule, wildcards, resources, the command's flags
    ({"--steps": "100", "--compile": True}, up to the log redirection)."""
    jobs = []
    for rule, block, command in re.findall(
        r"^rule (\w+):\n(.*?)^Shell command: ([^\n]*)", output, re.S | re.M
    ):
        wildcards = re.search(r"^    wildcards: (.*)$", block, re.M)
        words = shlex.split(command.split(" > ")[0])
        flags = {}
        for i, word in enumerate(words):
            if word.startswith("--"):
                following = words[i + 1] if i + 1 < len(words) else "--"
                flags[word] = True if following.startswith("--") else following
        resources = _fields(re.search(r"^    resources: (.*)$", block, re.M)[1])
        jobs.append(
            {
                "rule": rule,
                "wildcards": _fields(wildcards[1] if wildcards else ""),
                "resources": resources,
                "flags": flags,
            }
        )
    return jobs


def merged(base: dict, over: dict) -> dict:
    """A config file over the default, as Snakemake merges them (dicts key by key)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return out


def expected_options(rule: str, wildcards: dict, config: dict) -> dict:
    """The options the config sets for one job, key by key, read from the config as its README
    documents them (config/README.md)."""
    if rule in ("train", "train_seed"):
        size = config["train"].get("by_size", {}).get(wildcards["model"].split("-", 1)[1], {})
        driver_keys = ("seeds", "dataset", "by_size")  # the driver's, never the trainer's flags
        return {k: v for k, v in (config["train"] | size).items() if k not in driver_keys}
    if rule == "synthetic_task":
        task = config["synthetic"]["tasks"][wildcards["task"]]
        options = {k: v for k, v in task.items() if k not in ("d_model", "archs", "by_arch")}
        return options | task.get("by_arch", {}).get(wildcards["arch"], {})
    if rule.startswith("bench_"):
        return config["bench"][rule.removeprefix("bench_")]
    if rule in ("evaluate", "evaluate_pretrained"):
        options = {k: v for k, v in config["eval"].items() if k not in ("pretrained", "tokenizer")}
        return options | ({"tokenizer": config["eval"]["tokenizer"]} if rule == "evaluate_pretrained" else {})
    if rule in ("download", "tokenize"):
        dataset = config["data"][config["train"]["dataset"]]
        if rule == "download":
            return dataset["source"]
        tokenizer = dict(dataset["tokenizer"])
        return {"tokenizer": tokenizer.pop("kind"), **tokenizer}
    return {}


def assert_options_reach(job: dict, config: dict) -> None:
    """Each option the config sets for the job is on its command line as set: a switch present
    where true and absent where false, a list comma-separated, 0 as 0."""
    for key, value in expected_options(job["rule"], job["wildcards"], config).items():
        flag, where = "--" + key.replace("_", "-"), (job["rule"], job["wildcards"], key, value)
        if value is None or value is False:
            assert flag not in job["flags"], where
        elif value is True:
            assert job["flags"].get(flag) is True, where
        else:
            rendered = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            assert job["flags"].get(flag) == rendered, where


# The config's `resources` entry of each rule's jobs.
RESOURCE_STAGES = {
    "kernels": "kernels",
    "download": "download",
    "tokenize": "tokenize",
    "train": "train",
    "train_seed": "train",
    "bench_kernels": "bench",
    "bench_generation": "bench",
    "bench_training": "bench",
    "evaluate": "eval",
    "evaluate_pretrained": "eval",
    "export_hf": "export",
    "synthetic_task": "synthetic",
}


def test_every_job_of_the_paper_dag_on_slurm_gets_its_partition_options_and_resources(paper_plan):
    """For each job of the paper run: its partition matches its `gpu` resource; its command carries
    every option the config sets, zeros and false included; its memory and runtime are the config's
    for its size."""
    config = merged(
        *(yaml.safe_load((REPO / f"config/{name}.yaml").read_text()) for name in ("config", "paper"))
    )
    jobs = planned_jobs(paper_plan)
    assert {job["rule"] for job in jobs} >= {"train", "synthetic_task", "evaluate", "tokenize", "export_hf"}
    for job in jobs:
        rule, resources = job["rule"], job["resources"]
        gpus = int(resources.get("gpu", 0))
        assert resources["slurm_partition"] == ("gpu" if gpus else "cpu"), (rule, job["wildcards"], resources)
        assert_options_reach(job, config)
        table = config["resources"].get(RESOURCE_STAGES.get(rule), {})
        size = job["wildcards"]["model"].split("-", 1)[1] if "model" in job["wildcards"] else None
        for key in ("mem_mb", "runtime"):
            want = table.get(size, {}).get(key, table.get("default", {}).get(key))
            if want is not None:
                assert int(resources[key]) == want, (rule, job["wildcards"], key)


def test_a_training_job_on_several_nodes_is_planned_as_one_srun_task_per_node(tmp_path, slurm_profile):
    (tmp_path / "nodes.yaml").write_text("resources: {train: {2.8b: {gpu: 8, nodes: 4}}}\n")
    done = snakemake(
        "results/paper/train/mamba-2.8b/summary.json",
        "-n",
        "--workflow-profile",
        str(slurm_profile),
        "--configfile",
        str(REPO / "config/paper.yaml"),
        str(tmp_path / "nodes.yaml"),
        cwd=tmp_path,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    job = output.split("rule train:", 1)[1].split("Shell command:", 2)
    assert "nodes=4, tasks=4, mpi=srun, gres=gpu:8, tasks_per_gpu=0" in job[0]
    assert "slurm_extra=--signal=TERM@300" in job[0]  # SIGTERM ahead of the time limit: a graceful stop
    assert (
        job[1]
        .strip()
        .startswith("exec seqarena launch --nodes 4 --nproc-per-node 8 -- train --model mamba-2.8b")
    )


def mqar_config(**options):
    """A synthetic section with one MQAR task of these options."""
    return {"synthetic": {"archs": ["mamba"], "tasks": {"mqar": {"d_model": [8], **options}}}}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"models": ["rwkv-tiny"]}, "models"),  # schema pattern: the architecture
        ({"models": ["mamba-huge"]}, "'mamba-huge' is not one of \\['mamba-micro'"),
        ({"trian": {}}, "Additional properties are not allowed \\('trian' was unexpected\\)"),
        ({"train": {"dataset": "shakespeare", "steps": -5}}, "-5 is less than the minimum of 0"),
        ({"train": {"dataset": "wiki"}}, "config key train.dataset: 'wiki' is not one of data"),
        ({"device": "tpu"}, "'tpu' is not one of \\['cpu', 'cuda'\\]"),
        ({"resources": {"train": {"default": {"gpus": 2}}}}, "'gpus' was unexpected"),
        (mqar_config(by_arch={"rwkv": {}}), "'rwkv' is not one of"),
        (mqar_config(by_arch={"mamba": {"lr": 0}}), "0 is less than or equal to the minimum of 0"),
        (mqar_config(by_arch={"mamba": {"d_model": [4]}}), "'d_model' was unexpected"),
        (mqar_config(stpes=3), "'stpes' was unexpected"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, overrides, message):
    done = snakemake(
        "--configfile", str(write_pipeline_config(tmp_path, **overrides)), "--cores", "1", "-n", cwd=tmp_path
    )
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr), (done.stdout + done.stderr)[-2000:]
    assert not (tmp_path / "results").exists()


def test_the_schema_lists_exactly_the_size_registrys_model_ids_and_the_families_table():
    from seqarena.models import FAMILIES, SIZES, model_ids

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["models"]["items"]["enum"] == model_ids()
    families = schema["$defs"]["family"]["enum"]  # the {arch} wildcard's
    assert sorted(families) == sorted(FAMILIES) == sorted(SIZES)


def test_the_schema_allows_exactly_the_config_fields_of_training_and_the_synthetic_tasks():
    """A key the schema lists reaches its stage's config, and every config field has a key (the
    driver-only keys aside)."""
    import dataclasses

    from seqarena.synthetic import SyntheticConfig
    from seqarena.training import TrainConfig

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    train = set(schema["properties"]["train"]["properties"]) - {"seeds", "by_size"}  # dataset: a tag
    set_by_the_driver = {"model", "data", "out", "tracking_uri", "experiment", "run_name"}
    assert train == {f.name for f in dataclasses.fields(TrainConfig)} - set_by_the_driver
    synthetic = set(schema["$defs"]["synthetic_run"]["properties"])
    per_task = {"task", "arch", "d_model", "seed"}  # the task's name, its archs, widths and seeds
    assert synthetic == {f.name for f in dataclasses.fields(SyntheticConfig)} - per_task


def test_every_stages_config_section_is_exactly_its_commands_config_fields():
    """Each section the driver turns into flags (stage_args) has a key for every field of the
    stage's config that the config file sets, and no key the command would refuse."""
    import dataclasses

    from seqarena.bench import GenerationBenchConfig, KernelBenchConfig, TrainingBenchConfig
    from seqarena.data import Source, TokenizeConfig
    from seqarena.eval import EvalConfig

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    dataset = schema["properties"]["data"]["additionalProperties"]["properties"]
    bench = schema["properties"]["bench"]["properties"]
    tracked = {"tracking_uri", "experiment"}  # where to log: the driver's, for every tracked stage

    def fields(config_cls):
        return {f.name for f in dataclasses.fields(config_cls)}

    assert set(dataset["source"]["properties"]) == fields(Source)
    tokenizer = set(dataset["tokenizer"]["properties"]) - {"kind"} | {"tokenizer"}  # kind: --tokenizer
    assert tokenizer == fields(TokenizeConfig) - {"raw", "out", "workers"}  # workers: the rule's threads
    assert set(bench["kernels"]["properties"]) == fields(KernelBenchConfig) - tracked - {"out"}
    by_path = {"model", "out", "vocab_size"}  # a checkpoint's vocabulary is its own
    assert set(bench["generation"]["properties"]) == fields(GenerationBenchConfig) - tracked - by_path
    from_train = {"compile"}  # the training bench compiles as training does
    training_bench = fields(TrainingBenchConfig) - tracked - {"model", "out"} - from_train
    assert set(bench["training"]["properties"]) == training_bench
    per_job = {"model", "out", "cache_dir", "run_name", "device"}  # device: config's `device`, for all
    assert (
        set(schema["properties"]["eval"]["properties"]) - {"pretrained"}
        == fields(EvalConfig) - tracked - per_job
    )


@pytest.fixture(scope="module")
def driver_venv(tmp_path_factory) -> Path:
    """A venv with Snakemake and the SLURM plugin only, as on a login node: no torch, no seqarena."""
    from importlib.metadata import version

    venv = tmp_path_factory.mktemp("driver") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    packages = [f"{name}=={version(name)}" for name in ("snakemake", "snakemake-executor-plugin-slurm")]
    pip = [str(venv / "bin/pip"), "install", "-q", *packages]
    install = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (
        subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True).returncode != 0
    )
    return venv


@pytest.mark.parametrize("paper,jobs", [(False, 34), (True, 88)], ids=["default", "paper-slurm"])
def test_a_bare_snakemake_plans_the_dags_without_torch_or_seqarena(
    driver_venv, tmp_path, slurm_profile, paper, jobs
):
    on_slurm = ["--workflow-profile", str(slurm_profile), "--configfile", str(REPO / "config/paper.yaml")]
    args = on_slurm if paper else []
    plan = [str(driver_venv / "bin/snakemake"), "--snakefile", str(REPO / "Snakefile"), "-n", *args]
    done = subprocess.run(plan, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert sum(job_counts(output).values()) == jobs


RULE_ENVS = """
import json, os, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

repo, configfiles = Path(sys.argv[1]), [Path(f) for f in sys.argv[2:]]
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=configfiles),
        storage_settings=StorageSettings(),
        snakefile=repo / "Snakefile",
        workdir=Path.cwd(),
    )._workflow
    envs = {rule.name: rule.conda_env for rule in workflow.rules if rule.shellcmd}
print(json.dumps({"envs": envs, "override": os.environ.get("CONDA_OVERRIDE_CUDA")}))
"""


@pytest.mark.parametrize("name,env", [("paper", "gpu"), ("config", "cpu")])
def test_every_job_runs_in_the_devices_conda_env_which_a_host_without_a_gpu_can_create(tmp_path, name, env):
    """Each rule's conda env is the config's device's (--use-conda, or the SLURM profile's conda
    deployment); a CUDA config sets CONDA_OVERRIDE_CUDA to the GPU env's CUDA series where
    Snakemake creates the envs, so a login node without a GPU can solve them."""
    without = {k: v for k, v in ENV.items() if k != "CONDA_OVERRIDE_CUDA"}
    command = [str(BIN / "python"), "-c", RULE_ENVS, str(REPO), str(REPO / f"config/{name}.yaml")]
    done = subprocess.run(command, cwd=tmp_path, env=without, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = json.loads(done.stdout.splitlines()[-1])
    assert len(planned["envs"]) >= 12 and set(planned["envs"].values()) == {f"../../envs/{env}.yaml"}
    pins = yaml.safe_load((REPO / "envs/gpu.yaml").read_text())["dependencies"]
    assert planned["override"] == ("13.0" if env == "gpu" else None)
    assert "cuda-version=13.0" in pins  # the series the override names is the env's own


# Every key a stage's command takes, each set apart from the command's own default: zeros where
# the default is not zero, true where it is false, a number where it is None.
SWEEP = {
    "train": {
        "steps": 3,
        "tokens": 4096,
        "batch_tokens": 512,
        "micro_batch": 2,
        "seq_len": 16,
        "lr": 0.002,
        "min_lr_ratio": 0,
        "min_lr": 1e-5,
        "warmup": 0,
        "weight_decay": 0,
        "beta1": 0,
        "beta2": 0.5,
        "grad_clip": 0.5,
        "eval_interval": 1,
        "eval_windows": 2,
        "ckpt_interval": 1,
        "keep_checkpoints": 3,
        "force_restart": True,
        "verify_data": True,
        "seed": 7,
        "compile": True,
        "deterministic": True,
        "activation_checkpointing": True,
        "parallel": "fsdp",
        "scan_backend": "torch",
        "peak_tflops": 12.5,
    },
    "bench": {
        "kernels": {
            "lengths": [16, 32],
            "batch": 2,
            "dim": 8,
            "state": 4,
            "backends": ["torch"],
            "repeats": 1,
        },
        "generation": {"prompt_len": 4, "new_tokens": 2, "batch_sizes": [3], "repeats": 2},
        "training": {"steps": 2, "warmup_steps": 0, "seq_len": 8, "micro_batch": 1, "vocab_size": 300},
    },
    "eval": {"limit": 0.5, "batch_size": 3, "num_fewshot": 0},
    "synthetic": {
        "archs": ["mamba"],
        "tasks": {
            "mqar": {
                "d_model": [8],
                "length": 8,
                "vocab": 8,
                "n_pairs": 1,
                "n_layer": 1,
                "d_state": 2,
                "steps": 1,
                "batch": 1,
                "lr": 0.01,
                "weight_decay": 0,
                "beta1": 0,
                "beta2": 0.5,
                "grad_clip": 0.5,
                "test_lengths": [8, 16],
                "eval_sequences": 2,
                "max_attention_length": 8,
                "warmup": 0,
                "min_lr_ratio": 0,
                "min_lr": 0.001,
            }
        },
    },
}


def test_every_configured_value_reaches_its_command_zeros_and_false_included(tmp_path):
    """A config that sets every key of training, the benchmarks, evaluation, tokenizing and the
    synthetic tasks apart from the command's default: each reaches its job's command line as set."""
    config = merged(yaml.safe_load((REPO / "config/config.yaml").read_text()), SWEEP)
    dataset = config["train"]["dataset"]
    config["data"][dataset]["tokenizer"] |= {"vocab_size": 300, "val_fraction": 0.1, "max_tokens": 1000}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    done = snakemake("-n", "--configfile", str(tmp_path / "sweep.yaml"), cwd=tmp_path, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    jobs = planned_jobs(output)
    assert {
        "tokenize",
        "train",
        "bench_kernels",
        "bench_generation",
        "bench_training",
        "evaluate",
        "synthetic_task",
    } <= {job["rule"] for job in jobs}
    for job in jobs:
        assert_options_reach(job, config)
