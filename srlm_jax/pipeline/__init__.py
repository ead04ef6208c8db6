"""The pipeline: stages (one module each, a registry), their context, and the runner.

What stages leave on disk (DONE markers, atomic shards, published arrays: the one resume
mechanism, which evaluation uses too) is srlm_jax/store.py.

  settings.py  CreationSettings: the knobs of prompts, candidates, judgments and pairs
  seeds.py     the run's IFT and EFT seed records
  stage.py     Stage, the registry, Context (what a stage's run receives)
  stages/      the built-in stages, one module each
  runner.py    M1's SFT, then config.stages for each iteration, resumable
"""
