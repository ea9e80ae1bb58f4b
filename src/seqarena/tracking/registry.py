"""The model registry: an exported transformers folder as a registered MLflow model."""

import json
from pathlib import Path

from seqarena.tracking.runs import ModelRun
from seqarena.tracking.store import client_for, retry


def register_hf_model(uri: str, experiment: str, model_id: str, model_dir: Path, hf_dir: Path):
    """A transformers folder (``seqarena export``'s) logged as an MLflow ``transformers`` model in
    its training run (summary.json's ``mlflow_run_id``; else the model's run, found by tag) and
    registered under the model id: one version per training run, so exporting again adds none.
    It loads back without seqarena: ``mlflow.transformers.load_model("models:/<id>/<version>")``."""
    import mlflow
    import torch
    import transformers

    summary = Path(model_dir) / "summary.json"
    run_id = json.loads(summary.read_text()).get("mlflow_run_id") if summary.is_file() else None
    run_id = run_id or ModelRun(uri, experiment, model_id).run_id
    client = client_for(uri)

    def versions():
        return retry(client.search_model_versions, f"name = '{model_id}' and run_id = '{run_id}'")

    found = versions()
    if found:
        return found[0]
    components = {
        "model": transformers.AutoModelForCausalLM.from_pretrained(hf_dir),
        "tokenizer": transformers.AutoTokenizer.from_pretrained(hf_dir),
    }
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    ended = retry(client.get_run, run_id).info
    retry(mlflow.start_run, run_id=run_id)  # every call may meet a locked sqlite file: each retries
    try:
        retry(
            mlflow.transformers.log_model,
            components,
            name="hf-model",
            task="text-generation",
            registered_model_name=model_id,
            pip_requirements=requirements,
        )
    finally:
        retry(mlflow.end_run)
        if ended.end_time:  # the run's duration stays its training's, not the time of this export
            retry(client.set_terminated, run_id, ended.status, ended.end_time)
    return versions()[0]
