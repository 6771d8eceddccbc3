"""The ``probes`` command: info, demo (a run directory with report, figures, provenance, and the steering
and refusal sub-runs), zoo list."""

import json

import pytest

from probes.cli import main
from tests.tiny import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("olmoe_dir")
    build_model("olmoe", vocab_size=len(tiny_tokenizer)).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def test_info_prints_the_site_table(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "family=olmoe" in out and "experts=4 top-2" in out
    assert "router_logits[L]" in out and "model.layers.L.mlp.gate" in out


def test_demo_writes_a_report_with_provenance(model_dir, tmp_path, capsys):
    rc = main(["demo", "--model", str(model_dir), "--runs-root", str(tmp_path), "--max-new-tokens", "12",
               "--formats", "html", "--steering-model", str(model_dir), "--steering-layers", "0", "1",
               "--steering-alphas", "1", "4", "--steering-examples", "4", "--steering-max-new-tokens", "4",
               "--refusal-train", "4", "--refusal-eval", "2", "--refusal-ood", "", "--anchors-rollouts", "2",
               "--experts-problems", "2", "--experts-betas", "4", "--vectors-problems", "8"])
    assert rc == 0
    run_dir = next((tmp_path / "demo").iterdir())
    report = (run_dir / "report.html").read_text()
    for heading in ("Model", "A reasoning trace", "Attention", "Logit lens", "Steering", "Chosen cell: layer",
                    "Refusal cliff", "Receiver heads on a planted organism"):
        assert heading in report
    for figure in ("attention", "logit_lens", "steering_behaviour", "refusal_sentences"):
        assert (run_dir / "figures" / f"{figure}.html").is_file()
    steering = json.loads((run_dir / "summary.json").read_text())["steering"]
    sub = run_dir / steering["run"]  # the steering sub-run: its own config, markers and full report
    assert sub.parent.name == "steering" and (sub / "report.html").is_file() and (sub / "done" / "evaluate.json").is_file()
    assert steering["layer"] in (0, 1) and steering["alpha"] in (1.0, 4.0) and "prompting" in steering
    assert json.loads((sub / "config.json").read_text())["resolved"]["n_examples"] == 4
    planted = json.loads((run_dir / "summary.json").read_text())["planted_receivers"]  # zoo:long-reasoner's price/rent
    assert planted["trained"]["gap"] > planted["untrained"]["gap"] and "price" in planted["trained"]["top_sentence_roles"]
    refusal = json.loads((run_dir / "summary.json").read_text())["refusal"]  # on zoo:refusal-reasoner
    assert (run_dir / refusal["run"]).parent.name == "refusal_cliff" and refusal["harmful"]["refused"] == 1.0
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["model"]["spec"] == str(model_dir) and len(prov["model"]["weights_hash"]) == 64
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["passed"]["max_new_tokens"] == 12 and cfg["resolved"]["model"] == str(model_dir)
    assert "report:" in capsys.readouterr().out


def test_demo_report_covers_only_the_stages_asked_for(model_dir, tmp_path):
    rc = main(["demo", "--model", str(model_dir), "--runs-root", str(tmp_path), "--max-new-tokens", "8",
               "--formats", "html", "--stages", "model", "trace", "report"])
    assert rc == 0
    report = (next((tmp_path / "demo").iterdir()) / "report.html").read_text()
    assert "A reasoning trace" in report and "Logit lens" not in report and "Attention</h" not in report


def test_errors_are_one_line_with_the_fix(capsys):
    assert main(["info", "zoo:nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown organism zoo:nope" in err and "Traceback" not in err
