"""Facts from the Mamba paper (Gu & Dao 2023) that the pipeline compares against."""

# Table 3's zero-shot tasks, in lm-evaluation-harness names.
PAPER_TASKS = ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"]
