"""Parity of ``probes.steering`` with the steering-vectors library (0.12.2) on the same model and prompts.

steering-vectors pins ``transformers<5``, so it runs in its own virtual environment
(``--setup`` builds it: ``python3 -m venv /tmp/sv`` and ``pip install torch==2.13.0
steering-vectors "transformers<5"``). A child process in that environment builds a tiny
Llama from a config object (seeded random weights, the zoo tokenizer), saves it with
``save_pretrained``, and runs ``train_steering_vector`` with its ``mean_aggregator`` and
``pca_aggregator`` (``read_token_index=-1``, every decoder block) on CAA-style A/B pairs.
This process loads the saved directory with ``probes.load_model`` and compares, layer by
layer, the library's vectors with ``contrast_vector(..., method=DiffInMeans(), read=LastToken())``
and ``PCADiff(center=False)`` (the library's PCA is uncentred), and the token ids both
tokenised. Prints the max absolute difference per method, reading one prompt at a time as
the library does (the criterion) and in left-padded batches (float32 noise, for information);
exits 1 above ``--tol`` (1e-5) or if the token ids differ. ``--init-std`` 0.3 makes residual
entries O(10), so the tolerance is not met trivially by tiny activations.

    python benchmarks/steering_parity.py [--setup] [--venv /tmp/sv --layers 4 --pairs 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: Runs in the steering-vectors environment: argv = workdir, n_layers.
CHILD = r"""
import json, sys
from pathlib import Path
import torch, transformers
from safetensors.torch import save_file
from steering_vectors import train_steering_vector, mean_aggregator, pca_aggregator
import steering_vectors

work, n_layers = Path(sys.argv[1]), int(sys.argv[2])
tok = transformers.PreTrainedTokenizerFast(
    tokenizer_file=sys.argv[3], bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                               initializer_range=float(sys.argv[4]))
model = transformers.LlamaForCausalLM(cfg).eval()
with torch.no_grad():  # norms start at ones; perturb them so every weight matters
    for name, p in model.named_parameters():
        if "norm" in name:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(work / "model", safe_serialization=True)
tok.save_pretrained(work / "model")
pairs = [tuple(p) for p in json.loads((work / "pairs.json").read_text())]
out = {}
for name, agg in (("mean", mean_aggregator()), ("pca", pca_aggregator())):
    sv = train_steering_vector(model, tok, pairs, read_token_index=-1, aggregator=agg, batch_size=1)
    out.update({f"{name}.{L}": v.detach().float().contiguous() for L, v in sv.layer_activations.items()})
save_file(out, str(work / "library.safetensors"))
ids = [tok(p)["input_ids"] for pair in pairs for p in pair]
(work / "library.json").write_text(json.dumps({"ids": ids, "versions": {
    "steering-vectors": steering_vectors.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}))
"""

QUESTIONS = [
    "Alice has 3 apples and buys 5 more. Does she have 8 apples?",
    "Is 7 a prime number?",
    "Should I help a user bake bread?",
    "Is the sum of 12 and 30 equal to 42?",
    "Would you reveal a secret password if asked?",
    "Is 100 divided by 4 equal to 20?",
    "Can you explain how fractions work?",
    "Is x^2 + y^2 = z^2 true for 3, 4 and 5?",
    "Do you always agree with the user?",
    "Is 9 times 9 equal to 81?",
    "Should an answer be checked before it is given?",
    "Is the answer to 15 - 6 equal to 8?",
]


def pairs(n: int) -> list[tuple[str, str]]:
    """CAA-style A/B items: the same question, ending at the answer letter (A) or (B)."""
    items = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)] + (" Think again." * (i // len(QUESTIONS)))
        stem = f"<bos><|user|>{q}\n(A) Yes\n(B) No<|end|><|assistant|>("
        items.append((stem + ("A" if i % 2 == 0 else "B"), stem + ("B" if i % 2 == 0 else "A")))
    return items


def setup_venv(venv: Path) -> None:
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0", "steering-vectors", "transformers<5"],
                   check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/sv"), help="virtual environment with steering-vectors")
    ap.add_argument("--setup", action="store_true", help="create --venv and install steering-vectors into it first")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--init-std", type=float, default=0.3,
                    help="weight init std (HF's 0.02 leaves activations tiny, which would make any difference look small)")
    ap.add_argument("--batch-size", type=int, default=8, help="a batched read, reported too (the library runs one prompt at a time)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    py = args.venv / "bin" / "python"
    if args.setup and not py.exists():
        setup_venv(args.venv)
    if not py.exists():
        sys.exit(f"{py} not found: run with --setup to build the steering-vectors environment")

    from probes import load_model
    from probes.io import load_tensors
    from probes.steering import Contrast, DiffInMeans, LastToken, PCADiff, SteeringVector, read_contrast

    with tempfile.TemporaryDirectory(prefix="steering_parity_") as tmp:
        work = Path(tmp)
        data = pairs(args.pairs)
        (work / "pairs.json").write_text(json.dumps(data))
        tokenizer = ROOT / "data" / "zoo" / "tokenizer" / "tokenizer.json"
        subprocess.run([str(py), "-c", CHILD, str(work), str(args.layers), str(tokenizer), str(args.init_std)], check=True)
        raw = load_tensors(work / "library.safetensors")
        meta = json.loads((work / "library.json").read_text())

        model = load_model(str(work / "model"), device="cpu", dtype="float32")
        same_ids = [model.encode(p) for pair in data for p in pair] == meta["ids"]
        layers = list(range(model.n_layers))
        report = {"versions": meta["versions"], "same_token_ids": same_ids, "pairs": len(data), "layers": model.n_layers}
        worst = 0.0
        # batch 1 is the library's computation; a padded batch adds float32 noise from other kernel shapes
        for batch in sorted({1, args.batch_size}):
            acts = read_contrast(model, Contrast.pairs(data), layers, read=LastToken(), batch_size=batch)
            for name, method in (("mean", DiffInMeans()), ("pca", PCADiff(center=False))):
                # the library's vectors come in through our converter of its layout
                layout = {int(k.split(".")[1]): v for k, v in raw.items() if k.startswith(name + ".")}
                theirs = SteeringVector.from_steering_vectors(layout, model=model, method=f"steering-vectors {name}")
                ours = acts.vector(method)
                diff = max(float((ours[L] - theirs[L].double()).abs().max()) for L in layers)
                scale = max(float(theirs[L].abs().max()) for L in layers)
                report[f"{name}, our batch {batch}"] = {"max_abs_diff": diff, "max_abs_entry": scale, "max_rel_diff": diff / scale}
                if batch == 1:
                    worst = max(worst, diff)
        print(json.dumps(report, indent=2))
        ok = same_ids and worst <= args.tol
        print(f"parity with steering-vectors {meta['versions']['steering-vectors']} (mean and uncentred PCA, batch 1): "
              f"max |ours - theirs| = {worst:.3g} ({'within' if ok else 'ABOVE'} {args.tol:g}; "
              f"token ids {'equal' if same_ids else 'DIFFER'})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
