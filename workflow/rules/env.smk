rule kernels:
    output:
        f"{RESULTS}/env/kernels.json",
    log:
        f"{RESULTS}/logs/env/kernels.log",
    benchmark:
        f"{RESULTS}/benchmarks/env/kernels.tsv"
    conda:
        ENV
    threads: job_resources("kernels", "threads")
    resources:
        gpu=job_resources("kernels", "gpu"),
        mem_mb=job_resources("kernels", "mem_mb"),
        runtime=job_resources("kernels", "runtime"),
    params:
        gpus=gpu_slot,
        tracking=tracking_uri(),
    shell:
        "{params.gpus}seqarena env --out {output:q} --tracking-uri {params.tracking:q} > {log:q} 2>&1"
