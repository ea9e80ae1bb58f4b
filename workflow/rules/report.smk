rule report:
    input:
        train_summaries(),
        train_seed_summaries(),
        bench_results(),
        eval_results(),
        synthetic_results(),
        rules.scaling.output,
        kernels=rules.kernels.output[0],
        notebook=os.path.join(workflow.basedir, "notebooks/report.ipynb"),
    output:
        notebook=f"{RESULTS}/reports/report.ipynb",
        html=report(
            f"{RESULTS}/reports/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        figures=report(
            directory(f"{RESULTS}/reports/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{RESULTS}/logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input.kernels)),
    shell:
        "seqarena report --notebook {input.notebook:q} --results {params.results:q} --out {output.notebook:q}"
        " --html {output.html:q} --figures {output.figures:q} > {log:q} 2>&1"
