import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Threads that spin while waiting multiply run times when anything else shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run slow tests (full retraining, big sweeps)")


TIERS = ("unit", "organism", "parity", "notebooks")  # DESIGN.md "Testing tiers": one folder each


def _tier(nodeid: str) -> str:
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS else "other"


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        item.add_marker(getattr(pytest.mark, _tier(item.nodeid)))


def pytest_terminal_summary(terminalreporter):
    """One line per tier, so CI shows which tier failed."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") or outcome == "skipped":
                tier = counts.setdefault(_tier(report.nodeid), {})
                tier[outcome] = tier.get(outcome, 0) + 1
    terminalreporter.section("tiers")
    for tier in (*TIERS, "other"):
        if tier in counts:
            terminalreporter.write_line(f"{tier:>10}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts[tier].items())))


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from tests.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_models(tiny_tokenizer):
    """family → probes Model over a tiny random HF model (built once per session)."""
    from probes.models.load import from_hf
    from tests.tiny import build_model

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = from_hf(build_model(family, vocab_size=len(tiny_tokenizer)), tiny_tokenizer, spec=f"tiny:{family}")
        return cache[family]

    return get


@pytest.fixture(scope="session")
def shipped():
    """name → directory of a shipped organism in ``data/zoo``; fails (never skips) when it is missing."""
    from probes.models.zoo_registry import ZOO_DIR

    def get(name):
        d = ZOO_DIR / name
        if not (d / "model.safetensors").is_file():
            pytest.fail(f"zoo:{name} is missing from {ZOO_DIR}: rebuild it with `python -m experiments.zoo {name}`")
        return d

    return get
