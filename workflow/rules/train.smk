rule train:
    input:
        meta=f"{train_data()}/meta.json",
    output:
        summary=f"{RESULTS}/train/{{model}}/summary.json",
        weights=f"{RESULTS}/train/{{model}}/model.safetensors",
        config=f"{RESULTS}/train/{{model}}/config.json",
        metrics=f"{RESULTS}/train/{{model}}/metrics.jsonl",
    log:
        f"{RESULTS}/logs/train/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv"
    conda:
        "../../envs/cpu.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        args=train_args,
        data=lambda wildcards, input: os.path.dirname(input.meta),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "seqarena train --model {wildcards.model} --data {params.data} --out {params.out} {params.args} > {log} 2>&1"


rule train_all:
    input:
        train_summaries(),
