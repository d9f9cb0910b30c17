"""The toolkit's code, one package per concern (docs/ARCHITECTURE.md, "Layers"): common (config, errors,
device, runs, atomic writes) <- control (systems, optima, answers, metrics, datasets; no torch) <- llm
(models, SFT, GRPO, rewards, generation, evaluation, reports); blt (the byte-level model) uses common."""
