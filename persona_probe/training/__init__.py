"""Training pipelines: supervised finetuning (LoRA or full) with an assistant-only loss, the
emergent-misalignment induction and re-alignment runs, preventative steering and ablation during
finetuning, and training-data screening by persona-vector projection."""
