rule export_hf:
    input:
        rules.train.output.summary,
    output:
        config=f"{RESULTS}/hf/{{model}}/config.json",
        weights=f"{RESULTS}/hf/{{model}}/model.safetensors",
        tokenizer=f"{RESULTS}/hf/{{model}}/tokenizer.json",
    log:
        f"{RESULTS}/logs/export/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/{{model}}.tsv"
    conda:
        ENV
    threads: job_resources("export", "threads")
    resources:
        mem_mb=job_resources("export", "mem_mb"),
        runtime=job_resources("export", "runtime"),
    params:
        model=lambda wildcards, input: os.path.dirname(input[0]),
        out=lambda wildcards, output: os.path.dirname(output.config),
        args=lambda w: stage_args("export", w),
    shell:
        "seqarena export --format hf {params.model:q} {params.out:q} {params.args} > {log:q} 2>&1"


rule export_all:
    input:
        hf_exports(),
