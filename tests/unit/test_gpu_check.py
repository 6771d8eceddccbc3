"""benchmarks/gpu_check.py: the CPU smoke run passes every check, a missing CUDA device
is one clear line with exit status 2, and each check fails on a broken device model
(other weights, an intervention that is not applied, wrong tokens, ignored seeds)."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gpu_check = _load()
TOL = gpu_check.TOLERANCES[torch.float32]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_smoke_run_passes_every_check(dtype):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--size", "small", "--dtype", dtype],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.splitlines()
    for family in gpu_check.FAMILIES:
        for check in gpu_check.CHECKS:
            assert any(ln.startswith(f"PASS  {check:<13} {family} ") for ln in lines), f"no {check} line for {family}"
    for site in ("resid_post", "attn_pattern", "head_out", "router_logits", "expert_topk"):
        assert any(site in ln for ln in lines if ln.startswith("PASS  sites")), site
    for name in ("AddVector", "ProjectOut", "ScaleHeads", "SuppressKeys", "ScaleExperts", "ForceExperts"):
        assert any(f" {name}" in ln for ln in lines if ln.startswith("PASS  interventions")), name
    assert not any(ln.startswith("FAIL") for ln in lines)
    # in bf16 the batch-composition promise is checked in float32; the bf16 outcome is a NOTE
    assert any(ln.startswith("NOTE  sampler") for ln in lines) == (dtype == "bfloat16")
    assert lines[-1].startswith("summary: PASS ") and f"on cpu {dtype}" in lines[-1]
    assert "tok/s" in out and "ratio" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0] and "--device cpu --size small" in err[0]


def test_bad_option_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--only", "sites,speed"])
    assert "unknown speed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def models():
    """family → (reference, same weights, other weights) on the CPU in float32."""
    from probes.models.load import from_hf

    size = gpu_check.SIZES["small"]
    tok = gpu_check.build_tokenizer(size.vocab)
    out = {}
    for family in gpu_check.FAMILIES:
        hf = gpu_check.build_hf(family, size, seed=0)
        same, other = copy.deepcopy(hf), gpu_check.build_hf(family, size, seed=1)
        out[family] = tuple(from_hf(m, tok, spec=f"test:{family}") for m in (hf, same, other))
    return out


@pytest.fixture(scope="module")
def batch():
    size = gpu_check.SIZES["small"]
    return gpu_check.prompts(size, size.vocab, seed=0)


@pytest.mark.parametrize("family", gpu_check.FAMILIES)
def test_sites_fail_against_other_weights(models, batch, family):
    ref, same, other = models[family]
    assert all(r.ok for r in gpu_check.check_sites(ref, same, TOL, batch))
    bad = list(gpu_check.check_sites(ref, other, gpu_check.TOLERANCES[torch.bfloat16], batch))
    assert bad and not any(r.ok for r in bad)


def test_interventions_fail_when_the_device_ignores_them(models, batch, monkeypatch):
    ref, same, _ = models["qwen3_moe"]
    assert all(r.ok for r in gpu_check.check_interventions(ref, same, TOL, batch))
    monkeypatch.setattr(same, "intervene", lambda *ivs: same.scope())  # hooks never attached
    bad = list(gpu_check.check_interventions(ref, same, gpu_check.TOLERANCES[torch.bfloat16], batch))
    assert len(bad) == 7 and not any(r.ok for r in bad)
    assert all("rel err 1.00e+00" in r.measured for r in bad)


def test_parity_fails_on_tokens_that_are_not_the_argmax(models, batch):
    ref = models["qwen3"][0]
    gen = ref.generate(batch[:1], max_new_tokens=8, eos_token_ids=[])[0].token_ids
    assert gpu_check.greedy_vs_forward(ref, batch[0], gen, TOL) == (8, 0.0, 0)
    wrong = [(t + 1) % ref.vocab_size for t in gen]
    hits, gap, beyond = gpu_check.greedy_vs_forward(ref, batch[0], wrong, TOL)
    assert hits < 8 and beyond > 0 and gap > 1.0


def test_sampler_fails_when_explicit_seeds_are_ignored(models, batch, monkeypatch):
    ref = models["qwen3"][0]
    assert all(r.ok for r in gpu_check.check_sampler(ref, ref, batch[0], 8, seed=0))
    sample = ref.sample

    def ignore_seeds(prefix, n=1, seeds=None, **kw):
        return sample(prefix, n, **kw)

    monkeypatch.setattr(ref, "sample", ignore_seeds)
    results = {r.name.split(" ", 1)[1]: r.ok for r in gpu_check.check_sampler(ref, ref, batch[0], 8, seed=0)}
    assert results == {"repeat n=8": True, "row alone": False, "row in another batch": False, "batch_size=3": True}
