"""The pipeline: stages (one module each, a registry), their context, and the runner.

  settings.py  CreationSettings: the knobs of prompts, candidates, judgments and pairs
  seeds.py     the run's IFT and EFT seed records
  store.py     DONE markers, atomic shards, published arrays: the one resume mechanism
  stage.py     Stage, the registry, Context (what a stage's run receives)
  stages/      the built-in stages, one module each
  runner.py    M1's SFT, then config.stages for each iteration, resumable
"""
