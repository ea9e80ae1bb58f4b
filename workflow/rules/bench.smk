rule bench_kernels:
    input:
        rules.kernels.output,
    output:
        f"{RESULTS}/bench/kernels.csv",
    log:
        f"{RESULTS}/logs/bench/kernels.log",
    benchmark:
        f"{RESULTS}/benchmarks/bench/kernels.tsv"
    conda:
        ENV
    threads: job_resources("bench", "threads")
    resources:
        gpu=job_resources("bench", "gpu"),
        mem_mb=job_resources("bench", "mem_mb"),
        runtime=job_resources("bench", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("bench_kernels", w),
    shell:
        "{params.gpus}seqarena bench kernels --out {output:q} {params.args} > {log:q} 2>&1"


rule bench_generation:
    input:
        rules.train.output.summary,
    output:
        f"{RESULTS}/bench/generation/{{model}}.json",
    log:
        f"{RESULTS}/logs/bench/generation/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bench/generation/{{model}}.tsv"
    conda:
        ENV
    threads: job_resources("bench", "threads")
    resources:
        gpu=job_resources("bench", "gpu"),
        mem_mb=job_resources("bench", "mem_mb"),
        runtime=job_resources("bench", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("bench_generation", w),
        model=lambda wildcards, input: os.path.dirname(input[0]),
    shell:
        "{params.gpus}seqarena bench generation --model {params.model:q} --out {output:q} {params.args} > {log:q} 2>&1"


rule bench_training:
    input:
        rules.kernels.output,
    output:
        f"{RESULTS}/bench/training/{{model}}.json",
    log:
        f"{RESULTS}/logs/bench/training/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/bench/training/{{model}}.tsv"
    conda:
        ENV
    threads: job_resources("bench", "threads")
    resources:
        gpu=job_resources("bench", "gpu"),
        mem_mb=job_resources("bench", "mem_mb"),
        runtime=job_resources("bench", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("bench_training", w),
    shell:
        "{params.gpus}seqarena bench training --model {wildcards.model} --out {output:q} {params.args} > {log:q} 2>&1"


rule bench_all:
    input:
        bench_results(),
