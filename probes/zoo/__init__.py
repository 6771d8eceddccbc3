"""Model organisms: small trained reasoning models with planted mechanisms (see data/zoo/, issue #3).

``tasks`` (seeded generators) → ``tokenizer`` (the one shared BPE) → ``train`` (and the RL stages
``grpo``, ``rsft``) → ``evaluate`` / ``routing`` (behaviour numbers) → ``card`` (MODEL.md, prose in
``cards/*.md``); ``organisms`` holds the recipes and the build pipeline of the organisms trained
from scratch, ``tv`` the task-vector family. Models load, sample and are read through the model
layer (``probes.models``), answers are extracted by ``probes.evals``, the task-vector arithmetic
is ``probes.vectors``; ``probes.models.zoo_registry`` finds the built organisms (``zoo:NAME``).
"""
