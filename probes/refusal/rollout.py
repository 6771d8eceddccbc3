"""The model's own rollouts on a prompt set: thinking and answer split at ``</think>``
(``reference/refusal.md`` A1 "Rollouts").

Each prompt is rendered with the model's chat template (thinking on); ``samples`` continuations
per prompt come from the shared-prefix sampler (``Model.sample``), one greedy continuation per
prompt from ``Model.generate`` at temperature 0. A rollout whose thinking never closes has no
answer (``answer is None``): judges and probes refuse it, and ``unclosed`` counts them so they
are reported rather than silently judged (A7). The reference samples at T = 0.7 with the system
prompt "You are a helpful assistant." (A1); the system prompt is opt-in here because the zoo's
organisms were never trained with one.

``probe_text`` is what the probe reads (A2 "Feature"): the rendered prompt, the thinking, the
closing ``</think>`` and the whitespace the model wrote after it — everything before the first
token of the answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from tqdm.auto import tqdm

from probes.io import atomic_write_text, read_jsonl
from probes.models.chat import THINK_CLOSE, ThinkingSplit, split_thinking

__all__ = ["RefusalRollout", "load_rollouts", "rollouts", "save_rollouts", "unclosed"]


@dataclass(frozen=True)
class RefusalRollout:
    """One continuation of one prompt: ``prompt`` is the user request, ``prompt_text`` the rendered
    chat prompt it continues, ``completion`` the generated text (after ``prompt_text``)."""

    prompt: str
    prompt_text: str
    completion: str
    finish_reason: str
    seed: int | None
    #: index of the prompt in the list given to ``rollouts`` and of the sample among its samples
    prompt_index: int = 0
    sample_index: int = 0

    @cached_property
    def split(self) -> ThinkingSplit:
        """Where the thinking and the answer lie in ``completion`` (``probes.models.chat.split_thinking``)."""
        return split_thinking(self.completion, opened=True)

    @property
    def closed(self) -> bool:
        """Whether the thinking was closed by ``</think>``."""
        return self.split.closed

    @property
    def thinking(self) -> str:
        """The thinking text (all of the completion when it never closes)."""
        return self.completion[slice(*self.split.thinking)]

    @property
    def answer(self) -> str | None:
        """The text after ``</think>``; ``None`` when the thinking never closes."""
        return self.completion[slice(*self.split.answer)] if self.closed else None

    @property
    def answer_start(self) -> int:
        """Character offset in ``completion`` of the answer's first non-space character."""
        if not self.closed:
            raise ValueError(f"rollout {self.prompt_index}/{self.sample_index} never closes its thinking with "
                             f"{THINK_CLOSE}: it has no answer (count it with unclosed(), do not probe or judge it)")
        rest = self.completion[self.split.answer[0]:]
        return self.split.answer[0] + len(rest) - len(rest.lstrip())

    @property
    def probe_text(self) -> str:
        """Prompt + thinking + ``</think>`` + the whitespace after it: the text whose last token the probe reads."""
        return self.prompt_text + self.completion[: self.answer_start]


def unclosed(items: Sequence[RefusalRollout]) -> int:
    """How many rollouts never close their thinking (reported next to every judged rate)."""
    return sum(not r.closed for r in items)


def rollouts(
    model,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    system: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    engine=None,
) -> list[RefusalRollout]:
    """``samples`` rollouts of each prompt (prompt-major order). Sample j of prompt i uses seed
    ``seed + i * samples + j``; at ``temperature`` 0 the one greedy continuation per prompt is
    batched (``samples`` must be 1). Generation runs on ``engine`` (``probes.engines``; default the local
    sampler over ``model``, or e.g. an OpenAI-compatible server) with those seeds; ``model`` renders the
    chat template."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: give at least one request")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"prompts {bad[:5]} are empty or not text: every prompt is a non-empty user request")
    if samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"samples ({samples}), batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) "
                         "must be positive")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0 and samples > 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one rollout per prompt, not {samples}: "
                         "set samples=1 or a temperature > 0")
    texts = [model.render_chat(p, system=system) for p in prompts]
    if engine is None:
        from probes.engines import LocalEngine

        engine = LocalEngine(model)
    if samples == 1:
        got = engine.generate(texts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                              batch_size=batch_size, progress=progress)
        return [RefusalRollout(prompts[i], texts[i], r.text, str(r.finish_reason), r.seed, i, 0)
                for i, r in enumerate(got)]
    out: list[RefusalRollout] = []
    for i in tqdm(range(len(texts)), desc="rollouts", disable=not progress):
        got = engine.sample(texts[i], samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            seeds=[seed + i * samples + j for j in range(samples)], batch_size=batch_size)
        out += [RefusalRollout(prompts[i], texts[i], r.text, str(r.finish_reason), r.seed, i, j)
                for j, r in enumerate(got)]
    return out


def save_rollouts(path: str | os.PathLike[str], items: Sequence[RefusalRollout]) -> Path:
    """Write rollouts as JSON lines, atomically."""
    return atomic_write_text(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in items))


def load_rollouts(path: str | os.PathLike[str]) -> list[RefusalRollout]:
    """Read rollouts written by ``save_rollouts``; a damaged line is an error naming file and line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no rollouts at {path}: run the rollout stage first")
    return read_jsonl(path, lambda row: RefusalRollout(**row), fix="delete the file and rerun the rollout stage")
