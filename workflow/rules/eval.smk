rule evaluate:
    input:
        summary=rules.train.output.summary,
        hub=ancient(rules.prefetch.output),  # what it fetches changing reruns it, not this
    output:
        f"{RESULTS}/eval/{{model}}.json",
    log:
        f"{RESULTS}/logs/eval/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}.tsv"
    conda:
        ENV
    threads: job_resources("eval", "threads")
    resources:
        gpu=job_resources("eval", "gpu"),
        mem_mb=job_resources("eval", "mem_mb"),
        runtime=job_resources("eval", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("eval", w),
        model=lambda wildcards, input: os.path.dirname(input.summary),
        cache=f"{RESULTS}/eval/cache",
        offline=OFFLINE,
    shell:
        "{params.offline}{params.gpus}seqarena eval --model {params.model:q} --out {output:q} --cache-dir {params.cache:q} {params.args} > {log:q} 2>&1"


rule evaluate_pretrained:
    input:
        kernels=rules.kernels.output,
        hub=ancient(rules.prefetch.output),  # what it fetches changing reruns it, not this
    output:
        f"{RESULTS}/eval/pretrained/{{ref}}.json",
    log:
        f"{RESULTS}/logs/eval/pretrained/{{ref}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/pretrained/{{ref}}.tsv"
    conda:
        ENV
    threads: job_resources("eval", "threads")
    resources:
        gpu=job_resources("eval", "gpu"),
        mem_mb=job_resources("eval", "mem_mb"),
        runtime=job_resources("eval", "runtime"),
    params:
        gpus=gpu_slot,
        args=lambda w: stage_args("eval", w),
        model=pretrained_id,
        cache=f"{RESULTS}/eval/cache",
        offline=OFFLINE,
    shell:
        "{params.offline}{params.gpus}seqarena eval --model {params.model:q} --run-name {params.model:q} --out {output:q} --cache-dir {params.cache:q} {params.args} > {log:q} 2>&1"


rule eval_all:
    input:
        eval_results(),
