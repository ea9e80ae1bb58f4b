rule scaling:
    input:
        train_summaries(),
        train_seed_summaries(),
    output:
        f"{RESULTS}/scaling/fits.json",
    log:
        f"{RESULTS}/logs/scaling.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        summaries=lambda wildcards, input: ",".join(input),
        args=lambda w: stage_args("scaling", w),
    shell:
        "seqarena scaling --summaries {params.summaries:q} --out {output:q} {params.args} > {log:q} 2>&1"
