if config["download_on_submit_host"]:

    localrules:
        download,
        prefetch,


rule download:
    output:
        directory(f"{RESULTS}/data/{{dataset}}/raw"),
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/{{dataset}}.tsv"
    # the data and the trainings first: the main comparison is on the longest path of the DAG
    priority: 2
    conda:
        ENV
    threads: job_resources("download", "threads")
    resources:
        mem_mb=job_resources("download", "mem_mb"),
        runtime=job_resources("download", "runtime"),
    params:
        args=lambda w: stage_args("download", w),
    shell:
        "seqarena data download {params.args} --out {output:q} > {log:q} 2>&1"


rule prefetch:
    output:
        f"{RESULTS}/hub/prefetched.json",
    log:
        f"{RESULTS}/logs/prefetch.log",
    benchmark:
        f"{RESULTS}/benchmarks/prefetch.tsv"
    priority: 2
    conda:
        ENV
    params:
        args=lambda w: stage_args("prefetch", w),
    shell:
        "seqarena prefetch --out {output:q} {params.args} > {log:q} 2>&1"


rule tokenize:
    input:
        raw=rules.download.output,
        hub=ancient(rules.prefetch.output),  # what it fetches changing reruns it, not this
    output:
        train=f"{RESULTS}/data/{{dataset}}/train.bin",
        val=f"{RESULTS}/data/{{dataset}}/val.bin",
        tokenizer=f"{RESULTS}/data/{{dataset}}/tokenizer.json",
        meta=f"{RESULTS}/data/{{dataset}}/meta.json",
    log:
        f"{RESULTS}/logs/tokenize/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize/{{dataset}}.tsv"
    priority: 2
    conda:
        ENV
    threads: job_resources("tokenize", "threads")
    resources:
        mem_mb=job_resources("tokenize", "mem_mb"),
        runtime=job_resources("tokenize", "runtime"),
    params:
        args=lambda w: stage_args("tokenize", w),
        out=lambda wildcards, output: os.path.dirname(output.meta),
        offline=OFFLINE,
    shell:
        "{params.offline}seqarena data tokenize --raw {input.raw:q} --out {params.out:q} --workers {threads} {params.args} > {log:q} 2>&1"


rule data:
    input:
        f"{train_data()}/meta.json",
