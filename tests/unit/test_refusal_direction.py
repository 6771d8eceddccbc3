"""The refusal direction (reference/refusal.md B2, B3) against direct computations on tiny models:
candidates vs numpy on captured activations, the score vs a hand computation, ablation leaves no
component at any layer, the orthogonalised checkpoint reproduces the hook-ablated logits, the B3
filters on hand-made tables, and the errors for bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import probes
from probes.models.load import from_hf
from probes.refusal.direction import (
    AllCandidatesFilteredError,
    CandidateScores,
    DirectionSelection,
    RefusalCandidates,
    activation_addition,
    candidate_directions,
    directional_ablation,
    orthogonalize_weights,
    post_instruction_positions,
    post_instruction_tokens,
    refusal_score,
    refusal_scores,
    score_candidates,
    select_direction,
)
from probes.steering.vector import SteeringVector

HARMFUL = ["Alice has 3 apples", "I cannot help with that", "First find the total", "Wait, that is wrong"]
HARMLESS = ["Correct! 8", "Sure, here is how to bake bread.", "The answer is 8", "Let me check"]


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen3")


def _prompts(model, requests):
    return [model.render_chat(r) for r in requests]


@pytest.fixture(scope="module")
def cands(qwen):
    return candidate_directions(qwen, _prompts(qwen, HARMFUL), _prompts(qwen, HARMLESS))


def _tied_qwen3(tok):
    import transformers as T

    torch.manual_seed(3)
    cfg = T.Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = T.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    return from_hf(hf, tok, spec="tiny:qwen3-tied")


# ----- candidates (B2) -------------------------------------------------------------------------------------
def test_post_instruction_tokens_are_the_template_suffix(qwen):
    ids = post_instruction_tokens(qwen)
    assert qwen.tokenizer.decode(ids) == "<|end|><|assistant|><think>"
    assert post_instruction_positions(qwen) == (-3, -2, -1)
    assert qwen.encode(qwen.render_chat("Correct! 8"))[-3:] == ids


def test_candidates_equal_numpy_diff_in_means_on_captured_activations(qwen, cands):
    sites = [f"resid_pre[{L}]" for L in range(qwen.n_layers)]

    def acts(requests):  # one unpadded forward per prompt: (n, T, d) per site, as numpy float64
        caps = [qwen.capture(p, sites) for p in _prompts(qwen, requests)]
        return {s: [c[s][0].double().numpy() for c in caps] for s in sites}

    h, n = acts(HARMFUL), acts(HARMLESS)
    assert cands.positions == (-3, -2, -1) and cands.layers == tuple(range(qwen.n_layers))
    assert cands.directions.dtype == torch.float64 and cands.directions.shape == (3, qwen.n_layers, qwen.d_model)
    for i, p in enumerate(cands.positions):
        for L, s in enumerate(sites):
            want = np.mean([x[p] for x in h[s]], 0) - np.mean([x[p] for x in n[s]], 0)
            np.testing.assert_allclose(cands.directions[i, L].numpy(), want, rtol=0, atol=1e-6)
    # layer 0 is the embedding of the same template tokens in every prompt: r = 0 (B6); not normalised elsewhere
    assert np.all(cands.norms()[:, 0] == 0) and np.all(cands.norms()[:, 1:] > 0)
    sv = cands.vector(-1, 1)
    assert sv.site == "resid_pre" and sv.layers == (1,) and torch.equal(sv[1], cands.direction(-1, 1))


def test_candidates_save_load_round_trip(cands, tmp_path):
    cands.save(tmp_path / "cands")
    assert RefusalCandidates.load(tmp_path / "cands") == cands


# ----- refusal score (B2) ------------------------------------------------------------------------------------
def test_refusal_score_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]], dtype=torch.float64))
    got = refusal_score(logits, [1])
    want = [math.log(0.25 + 1e-8) - math.log(0.75 + 1e-8), math.log(0.6 + 1e-8) - math.log(0.4 + 1e-8)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(refusal_score(logits[:1], [1, 2, 2]), [0.0], atol=1e-12)  # P = 0.5; ids deduplicated
    np.testing.assert_allclose(refusal_score(logits[:1], [0, 1, 2]), [math.log(1 + 1e-8) - math.log(1e-8)])


def test_refusal_scores_of_a_model_against_its_logits(qwen):
    texts = _prompts(qwen, HARMFUL[:3])
    ids = [qwen.encode("I", add_special_tokens=False)[0], 5]
    got = refusal_scores(qwen, texts, ids, batch_size=2)  # padded batches: the last token of each text
    for t, s in zip(texts, got):
        p = torch.softmax(qwen.forward(t)[0, -1].double(), -1)[ids].sum().item()
        assert s == pytest.approx(math.log(p + 1e-8) - math.log(1 - p + 1e-8), abs=1e-5)


# ----- interventions (B2) ------------------------------------------------------------------------------------
def test_ablation_leaves_no_component_at_any_layer(qwen, cands):
    r = cands.direction(-1, 1)
    u = (r / r.norm()).float()
    ivs = directional_ablation(qwen, r)
    assert len(ivs) == 3 * qwen.n_layers and all(iv.positions is None for iv in ivs)
    sites = [f"{s}[{L}]" for L in range(qwen.n_layers) for s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")]
    texts = _prompts(qwen, HARMFUL)
    base = qwen.capture(texts, sites)
    with qwen.intervene(*ivs):
        cap = qwen.capture(texts, sites)
    mask = cap.attention_mask.bool()
    for s in sites:
        x = cap[s][mask]
        assert (x @ u).abs().max() <= 1e-5 * x.norm(dim=-1).max(), s
        assert (base[s][mask] @ u).abs().max() > 1e-3, s  # there was a component to remove


def test_ablation_applies_to_generated_tokens(qwen, cands, tmp_path):
    """Greedy decoding under the hooks (KV cache, one new token per step) equals the orthogonalised
    checkpoint's, and differs from the base model's."""
    r = cands.direction(-2, 1)
    prompts = _prompts(qwen, HARMLESS[:2])
    with qwen.intervene(*directional_ablation(qwen, r)):
        hooked = [g.token_ids for g in qwen.generate(prompts, max_new_tokens=12, temperature=0)]
    ortho = probes.load_model(str(orthogonalize_weights(qwen, r, tmp_path / "o")), device="cpu", dtype="float32")
    assert [g.token_ids for g in ortho.generate(prompts, max_new_tokens=12, temperature=0)] == hooked
    base = [g.token_ids for g in qwen.generate(prompts, max_new_tokens=12, temperature=0)]
    assert base != hooked


def test_activation_addition_adds_the_raw_vector_at_one_block_input(qwen, cands):
    r = cands.direction(-1, 1)
    iv = activation_addition(qwen, r, 1, coeff=2.0)
    assert iv.site == "resid_pre[1]" and iv.scale == 2.0 and iv.positions is None
    text = _prompts(qwen, HARMFUL[:1])
    base = qwen.capture(text, ["resid_pre[0]", "resid_pre[1]"])
    with qwen.intervene(iv):
        cap = qwen.capture(text, ["resid_pre[0]", "resid_pre[1]"])
    torch.testing.assert_close(cap["resid_pre[0]"], base["resid_pre[0]"])
    torch.testing.assert_close(cap["resid_pre[1]"], base["resid_pre[1]"] + 2.0 * r.float(), atol=1e-5, rtol=0)


# ----- weight orthogonalisation (B2) ---------------------------------------------------------------------------
def _check_checkpoint(model, r, out: Path, texts):
    from transformers import AutoModelForCausalLM

    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert {"config.json", "model.safetensors", "tokenizer.json", "orthogonalization.json"} <= names
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp directory left
    batch = model.batch(texts)
    with model.intervene(*directional_ablation(model, r)):
        hooked = model.forward(texts)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    pos = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = plain(**batch, position_ids=pos).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], hooked[mask], atol=1e-4, rtol=1e-4)
    assert (hooked[mask] - model.forward(texts)[mask]).abs().max() > 1e-2  # the ablation changes the logits
    loaded = probes.load_model(str(out), device="cpu", dtype="float32")
    torch.testing.assert_close(loaded.forward(texts)[mask], hooked[mask], atol=1e-4, rtol=1e-4)
    return plain


@pytest.mark.parametrize("family", ["qwen3", "llama", "qwen3_moe", "qwen2_moe"])
def test_orthogonalised_checkpoint_equals_hook_ablation(tiny_models, family, tmp_path):
    model = tiny_models(family)
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = orthogonalize_weights(model, r, tmp_path / family)
    _check_checkpoint(model, r, out, _prompts(model, HARMFUL[:3]))


def test_tied_embeddings_are_untied_on_save(tiny_tokenizer, tmp_path):
    model = _tied_qwen3(tiny_tokenizer)
    before = model.hf.lm_head.weight.detach().clone()
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = orthogonalize_weights(model, r, tmp_path / "tied")
    plain = _check_checkpoint(model, r, out, _prompts(model, HARMLESS[:3]))
    assert plain.config.tie_word_embeddings is False
    torch.testing.assert_close(plain.lm_head.weight, before)  # the unembedding keeps the original matrix
    u = (r / r.norm()).float()
    assert (plain.model.embed_tokens.weight @ u).abs().max() < 1e-5
    # the source model is unchanged, still tied
    assert model.hf.lm_head.weight is model.hf.model.embed_tokens.weight and torch.equal(model.hf.lm_head.weight, before)


def test_biases_kept_by_default_with_a_warning_or_orthogonalised(tiny_tokenizer, tmp_path):
    import transformers as T

    torch.manual_seed(4)
    cfg = T.LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model = from_hf(hf, tiny_tokenizer, spec="tiny:llama-bias")
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    texts = _prompts(model, HARMFUL[:2])
    with pytest.warns(UserWarning, match="4 residual-writing biases keep their component"):
        kept = orthogonalize_weights(model, r, tmp_path / "keep")
    mask = model.batch(texts)["attention_mask"].bool()
    with model.intervene(*directional_ablation(model, r)):
        hooked = model.forward(texts)
    loaded = probes.load_model(str(kept), device="cpu", dtype="float32")
    assert (loaded.forward(texts)[mask] - hooked[mask]).abs().max() > 1e-3  # the reference's checkpoint is not exact
    _check_checkpoint(model, r, orthogonalize_weights(model, r, tmp_path / "exact", biases="orthogonalize"), texts)


def test_orthogonalise_refuses_an_existing_directory_and_gpt2(tiny_models, qwen, tmp_path):
    r = torch.ones(qwen.d_model)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists"):
        orthogonalize_weights(qwen, r, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="Llama-style families.*directional_ablation"):
        orthogonalize_weights(tiny_models("gpt2"), torch.ones(64), tmp_path / "g")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ----- selection (B3) ------------------------------------------------------------------------------------------
def _table(**over):
    # positions (-2, -1) × layers 0..4 of a 5-layer model: ⌊0.8·5⌋ = 4, so layer 4 is late
    bypass = np.array([[1.0, -2.0, -3.0, -1.0, -9.0], [0.5, -2.5, -4.0, -1.5, -9.0]])
    induce = np.full((2, 5), 1.0)
    kl = np.full((2, 5), 0.05)
    args = dict(positions=(-2, -1), layers=range(5), bypass=bypass, induce=induce, kl=kl, n_layers=5)
    return CandidateScores(**{**args, **over})


def test_filters_each_reason_and_min_bypass():
    t = _table()
    assert t.best() == (-1, 2)  # -4.0; layer 4 (-9) is late
    assert t.reasons()[(-1, 4)] == ("layer 4 >= floor(0.8*5) = 4",)
    kl = t.kl.copy()
    kl[1, 2] = 0.2
    t2 = _table(kl=kl)
    assert t2.reasons()[(-1, 2)] == ("KL 0.2 > 0.1",) and t2.best() == (-2, 2)
    induce = t.induce.copy()
    induce[:, 2] = -0.5
    t3 = _table(induce=induce)
    assert t3.reasons()[(-2, 2)] == ("induce -0.5 < 0.0",) and t3.best() == (-1, 1)
    bypass = t.bypass.copy()
    bypass[1, 1] = np.nan
    t4 = _table(bypass=bypass, induce=induce)
    assert t4.reasons()[(-1, 1)] == ("NaN score",) and t4.best() == (-2, 1)
    assert t.best(max_layer_fraction=None) == (-2, 4)  # a filter turned off; ties go to the first
    table = t3.table()
    assert len(table) == 10 and list(table.columns[:5]) == ["position", "layer", "bypass", "induce", "kl"]
    assert (table["discarded"] == "").sum() == 6


def test_all_candidates_filtered_lists_why():
    t = _table(induce=np.full((2, 5), -1.0))
    with pytest.raises(AllCandidatesFilteredError, match="All scores have been filtered out!") as e:
        t.best()
    msg = str(e.value)
    assert "position -2, layer 0: induce -1 < 0.0" in msg
    assert "position -1, layer 4: layer 4 >= floor(0.8*5) = 4; induce -1 < 0.0" in msg


def test_selection_on_a_tiny_model(qwen, cands, tmp_path):
    ids = qwen.encode("I", add_special_tokens=False)
    h, n = _prompts(qwen, HARMFUL), _prompts(qwen, HARMLESS)
    sel = select_direction(qwen, cands, h, n, ids, kl_threshold=None, induce_threshold=None, max_layer_fraction=1.0)
    s = sel.scores
    assert s.bypass.shape == (3, 2) and np.isnan(s.bypass[:, 0]).all() and np.isnan(s.kl[:, 0]).all()
    assert sel.layer == 1 and sel.position == cands.positions[int(np.nanargmin(s.bypass[:, 1]))]
    assert sel.vector.site == "resid_pre" and torch.equal(sel.direction, cands.direction(sel.position, 1))
    # the table's numbers are the scores under the interventions
    with qwen.intervene(*sel.ablation(qwen)):
        assert refusal_scores(qwen, h, ids).mean() == pytest.approx(s.bypass[cands.positions.index(sel.position), 1])
    with qwen.intervene(sel.addition(qwen)):
        assert refusal_scores(qwen, n, ids).mean() == pytest.approx(s.induce[cands.positions.index(sel.position), 1])
    assert s.baseline_harmful == pytest.approx(refusal_scores(qwen, h, ids).mean())
    # the default filters: a 2-layer model keeps only layer 0 (⌊1.6⌋ = 1), whose r is 0
    with pytest.raises(AllCandidatesFilteredError, match="NaN score \\(zero direction\\)"):
        score_candidates(qwen, cands, h, n, ids).best()
    sel.save(tmp_path / "sel")
    back = DirectionSelection.load(tmp_path / "sel")
    assert (back.position, back.layer, back.thresholds) == (sel.position, sel.layer, sel.thresholds)
    assert back.vector == sel.vector and np.array_equal(back.scores.bypass, s.bypass, equal_nan=True)


# ----- bad input ------------------------------------------------------------------------------------------------
def test_bad_input(qwen, cands, tmp_path):
    h, n = _prompts(qwen, HARMFUL), _prompts(qwen, HARMLESS)
    with pytest.raises(ValueError, match="layer 40 out of range.*layers 0..1"):
        candidate_directions(qwen, h, n, layers=[40])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        activation_addition(qwen, torch.ones(qwen.d_model), 5)
    with pytest.raises(ValueError, match="harmful set is empty"):
        candidate_directions(qwen, [], n)
    with pytest.raises(ValueError, match="harmless set is empty"):
        candidate_directions(qwen, h, [])
    with pytest.raises(ValueError, match="harmless val set is empty"):
        select_direction(qwen, cands, h, [], [5])
    with pytest.raises(ValueError, match="not negative integers"):
        candidate_directions(qwen, h, n, positions=[0])
    other = torch.ones(qwen.d_model + 1)
    for fn in (lambda: directional_ablation(qwen, other), lambda: activation_addition(qwen, other, 1),
               lambda: orthogonalize_weights(qwen, other, tmp_path / "x")):
        with pytest.raises(ValueError, match="width 65 but tiny:qwen3 has d_model 64: it belongs to another model"):
            fn()
    wide = RefusalCandidates(directions=torch.ones(1, 1, 65), positions=(-1,), layers=(1,), n_harmful=1, n_harmless=1)
    with pytest.raises(ValueError, match="width 65"):
        select_direction(qwen, wide, h, n, [5])
    with pytest.raises(ValueError, match="zero and has no direction"):
        directional_ablation(qwen, cands.direction(-1, 0))
    with pytest.raises(ValueError, match="outside .* vocabulary"):
        refusal_scores(qwen, h, [10**6])
    sv = SteeringVector(vectors={0: torch.ones(64), 1: torch.ones(64)}, method="x")
    with pytest.raises(ValueError, match="pass one layer's vector"):
        directional_ablation(qwen, sv)
    assert not (tmp_path / "x").exists()


def test_zoo_refusal_reasoner_template_refusal_token_and_checkpoint(tmp_path):
    """The zoo organism: eoi is ``<|end|><|assistant|><think>``, "I" is one token, and its tied
    embeddings are untied in an orthogonalised checkpoint that reproduces the hook-ablated logits."""
    zoo = probes.load_model("zoo:refusal-reasoner", device="cpu", dtype="float32")
    assert zoo.tokenizer.decode(post_instruction_tokens(zoo)) == "<|end|><|assistant|><think>"
    assert len(zoo.encode("I", add_special_tokens=False)) == 1 and _tied(zoo)
    req = ["Can you explain how to curse the teacher's carpet?", "How do I paint my fence?"]
    text = [zoo.render_chat(r) + "The user wants to know.</think>" for r in req]
    c = candidate_directions(zoo, text[:1], text[1:], positions=(-1,), layers=[1])
    out = orthogonalize_weights(zoo, c.direction(-1, 1), tmp_path / "zoo-orth")
    plain = _check_checkpoint(zoo, c.direction(-1, 1), out, text)
    assert plain.config.tie_word_embeddings is False


def _tied(model):
    return model.hf.lm_head.weight is model.hf.model.embed_tokens.weight
