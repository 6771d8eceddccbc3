"""Tiny offline test models: a byte-level BPE tokenizer with a chat template and
single-token <think>/</think>, and random models of every supported family built
from config objects (``reference/stack.md`` §2). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% else %}<think>{% endif %}{% endif %}"
)
_CORPUS = [
    "Alice has 3 apples and buys 5 more. How many apples does she have now?",
    "First find the total, then subtract the eaten ones. 3 + 5 = 8. Wait, that is wrong.",
    "The answer is \\boxed{8}. Let me check: 8 - 5 = 3. Correct!",
    "Résumé: naïve café — 東京 and emoji 🙂 with $\\frac{1}{2}$ and x^2 + y^2 = z^2.",
    "I cannot help with that request. Sure, here is how to bake bread.",
    "   leading spaces\n\nand\tnew lines\r\nhere.",
] * 20


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    bos = tok.token_to_id("<bos>")  # like Llama/R1 tokenizers: plain encoding adds BOS
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=SPECIALS[4:],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


FAMILIES = ("qwen2", "qwen3", "llama", "gpt2", "qwen3_moe", "olmoe", "mixtral", "qwen2_moe")
MOE_FAMILIES = ("qwen3_moe", "olmoe", "mixtral", "qwen2_moe")


def build_model(family: str, vocab_size: int = 512, seed: int = 0, layers: int = 2):
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    table = {
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=16)),
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
        "qwen3_moe": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM,
                      dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)),
        "olmoe": (T.OlmoeConfig, T.OlmoeForCausalLM, dict(num_experts=4, num_experts_per_tok=2)),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2)),
        "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM,
                      dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)),
    }
    if family == "gpt2":
        cfg = T.GPT2Config(n_embd=64, n_layer=layers, n_head=4, vocab_size=vocab_size, n_positions=512,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cls = T.GPT2LMHeadModel
    else:
        C, cls, extra = table[family]
        cfg = C(**common, **extra)
    cfg.architectures = [cls.__name__]
    model = cls(cfg).eval()
    with torch.no_grad():  # random init of norms is all-ones; perturb so tests see every weight
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            if "gate.weight" in name or "router" in name:
                p.normal_(0, 0.5)
    return model


def assert_no_hooks(model):
    """No forward hook and no attention hook is left on ``model`` (every scope cleaned up)."""
    for mod in model.hf.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert not any(model.attn_hooks.scores.values()) and not any(model.attn_hooks.pattern.values())
