rule synthetic_task:
    input:
        rules.kernels.output,
    output:
        f"{RESULTS}/synthetic/{{task}}/{{arch}}-d{{width}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/synthetic/{{task}}/{{arch}}-d{{width}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthetic/{{task}}/{{arch}}-d{{width}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: job_resources("synthetic", "threads")
    resources:
        gpu=job_resources("synthetic", "gpu"),
        mem_mb=job_resources("synthetic", "mem_mb"),
        runtime=job_resources("synthetic", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("synthetic", w),
    shell:
        "{params.gpus}seqarena synthetic --task {wildcards.task} --arch {wildcards.arch} --d-model {wildcards.width}"
        " --seed {wildcards.seed}"
        " --out {output:q} {params.args} > {log:q} 2>&1"


rule synthetic:
    input:
        synthetic_results(),
