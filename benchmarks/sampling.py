"""Shared-prefix sampler vs transformers' generate(num_return_sequences=n), same settings.

Issue #2 target: ratio >= 4x on a ~5M-parameter Qwen3-shaped model built from config,
prefix 800 tokens, n = 64, 64 new tokens, 2 threads. Prints both timings and the ratio.

    python benchmarks/sampling.py [--n 64 --prefix 800 --new 64 --threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def build(vocab: int = 4096):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Qwen3ForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=800)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from probes.models.load import from_hf

    hf = build()
    vocab = {f"t{i}": i for i in range(hf.config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                  bos_token="t1", eos_token="t2", pad_token="t0")
    model = from_hf(hf, tok, spec="bench:qwen3-5m")
    n_params = sum(p.numel() for p in hf.parameters())
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(4, hf.config.vocab_size, (args.prefix,), generator=g).tolist()
    settings = dict(temperature=0.6, top_p=0.95)

    def ours():
        return model.sample(prefix, args.n, max_new_tokens=args.new, eos_token_ids=[], seed=0, **settings)

    def hf_generate():
        ids = torch.tensor([prefix])
        with torch.no_grad():
            return hf.generate(ids, do_sample=True, num_return_sequences=args.n, max_new_tokens=args.new,
                               min_new_tokens=args.new, eos_token_id=None, pad_token_id=0, top_k=0, **settings)

    def best(fn):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    ours()  # warm-up (also builds the attention function registry)
    t_ours, rows = best(ours)
    t_hf, out = best(hf_generate)
    assert all(len(r.token_ids) == args.new for r in rows) and out.shape == (args.n, args.prefix + args.new)
    print(f"model: Qwen3-shaped, {n_params / 1e6:.1f}M params; prefix {args.prefix}, n={args.n}, "
          f"{args.new} new tokens, {args.threads} threads, T=0.6 top-p=0.95")
    print(f"transformers generate(num_return_sequences={args.n}): {t_hf:.2f} s")
    print(f"probes shared-prefix sample:                  {t_ours:.2f} s")
    print(f"ratio (generate / sample): {t_hf / t_ours:.2f}x   (target >= 4x)")


if __name__ == "__main__":
    main()
