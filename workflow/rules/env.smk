rule kernels:
    output:
        f"{RESULTS}/env/kernels.json",
    log:
        f"{RESULTS}/logs/env/kernels.log",
    benchmark:
        f"{RESULTS}/benchmarks/env/kernels.tsv"
    conda:
        ENV
    threads: 2
    resources:
        gpu=job_resources("kernels", "gpu"),
        mem_mb=job_resources("kernels", "mem_mb"),
        runtime=job_resources("kernels", "runtime"),
    params:
        tracking=tracking_uri(),
    shell:
        "seqarena env --out {output} --tracking-uri {params.tracking} > {log} 2>&1"
