"""Language models as controllers: loading, SFT and GRPO training, rewards, generation, evaluation, reports
and the pipeline's state."""
