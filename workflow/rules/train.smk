rule train:
    input:
        meta=f"{train_data()}/meta.json",
        kernels=rules.kernels.output,
    output:
        summary=f"{RESULTS}/train/{{model}}/summary.json",
        weights=f"{RESULTS}/train/{{model}}/model.safetensors",
        config=f"{RESULTS}/train/{{model}}/config.json",
        metrics=f"{RESULTS}/train/{{model}}/metrics.jsonl",
    log:
        f"{RESULTS}/logs/train/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv"
    priority: 1
    conda:
        ENV
    threads: job_resources("train", "threads")
    resources:
        gpu=train_gpus,
        nodes=multinode("nodes"),
        tasks=multinode("tasks"),
        mpi=multinode("mpi"),
        gres=multinode("gres"),
        tasks_per_gpu=multinode("tasks_per_gpu"),
        mem_mb=job_resources("train", "mem_mb"),
        runtime=job_resources("train", "runtime"),
    params:
        args=lambda w: stage_args("train", w),
        launch=launcher,
        data=lambda wildcards, input: os.path.dirname(input.meta),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    # exec: the trainer itself, not a shell that dies first, gets SLURM's SIGTERM and stops gracefully
    shell:
        "exec {params.launch} train --model {wildcards.model} --data {params.data:q} --out {params.out:q} {params.args}"
        " > {log:q} 2>&1"


use rule train as train_seed with:
    output:
        summary=f"{RESULTS}/train/{{model}}/seed{{seed}}/summary.json",
        weights=f"{RESULTS}/train/{{model}}/seed{{seed}}/model.safetensors",
        config=f"{RESULTS}/train/{{model}}/seed{{seed}}/config.json",
        metrics=f"{RESULTS}/train/{{model}}/seed{{seed}}/metrics.jsonl",
    log:
        f"{RESULTS}/logs/train/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/seed{{seed}}.tsv"


rule train_all:
    input:
        train_summaries(),
        train_seed_summaries(),
