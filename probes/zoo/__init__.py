"""Model organisms: small trained reasoning models with planted mechanisms (see data/zoo/, issue #3).

``tasks`` (seeded generators) → ``tokenizer`` (the one shared BPE) → ``train`` → ``evaluate`` /
``routing`` (behaviour numbers) → ``card`` (MODEL.md); ``organisms`` holds the recipes and the build
pipeline; ``probes.models.zoo_registry`` finds the built ones (``zoo:NAME``).
"""
