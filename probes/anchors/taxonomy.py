"""Sentence taxonomy of reasoning traces (reference/thought_anchors.md §2).

Eight functional categories plus ``unknown``. A labeler maps a problem and its chunks to
one :class:`ChunkLabel` per chunk: ``function_tags`` (several allowed; analyses use the
first and skip ``unknown``), ``depends_on`` (earlier chunk indices) and a 2–4 word
``summary``. Two labelers share that schema:

* :class:`RuleLabeler`: offline keyword and pattern rules, the default and the one tests use.
* :class:`LLMLabeler`: one call per trace to any OpenAI-compatible ``/chat/completions``
  endpoint (temperature 0, JSON output) through the ``openai`` client.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CATEGORY_DEFINITIONS",
    "TAGS",
    "ChunkLabel",
    "Labeler",
    "LabelerError",
    "LLMLabeler",
    "RuleLabeler",
    "Tag",
    "first_tag",
    "labeling_prompt",
    "parse_labels",
]

log = logging.getLogger(__name__)


class Tag(str, Enum):
    """The eight categories of §2 and ``unknown``."""

    PROBLEM_SETUP = "problem_setup"
    PLAN_GENERATION = "plan_generation"
    FACT_RETRIEVAL = "fact_retrieval"
    ACTIVE_COMPUTATION = "active_computation"
    RESULT_CONSOLIDATION = "result_consolidation"
    UNCERTAINTY_MANAGEMENT = "uncertainty_management"
    FINAL_ANSWER_EMISSION = "final_answer_emission"
    SELF_CHECKING = "self_checking"
    UNKNOWN = "unknown"


TAGS: tuple[str, ...] = tuple(t.value for t in Tag)

CATEGORY_DEFINITIONS: dict[str, str] = {
    "problem_setup": "Parsing or rephrasing the problem (restating given values, what is asked).",
    "plan_generation": "Stating or deciding on a plan of action, a strategy, or the next steps.",
    "fact_retrieval": "Recalling facts, formulas, definitions or problem details without computing.",
    "active_computation": "Carrying out algebra, arithmetic or other manipulations toward the answer.",
    "result_consolidation": "Aggregating intermediate results, summarising, or preparing the next step.",
    "uncertainty_management": "Expressing confusion, re-evaluating, or backtracking from an error.",
    "final_answer_emission": "Explicitly stating the final answer.",
    "self_checking": "Verifying previous steps, checking calculations, re-confirming results.",
    "unknown": "None of the above.",
}


@dataclass(frozen=True)
class ChunkLabel:
    """Labels of one chunk: ``function_tags`` (first = primary), ``depends_on`` (earlier chunk
    indices the chunk builds on) and a 2–4 word ``summary``."""

    function_tags: list[str] = field(default_factory=lambda: [Tag.UNKNOWN.value])
    depends_on: list[int] = field(default_factory=list)
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"function_tags": list(self.function_tags), "depends_on": list(self.depends_on), "summary": self.summary}


def first_tag(label: ChunkLabel | Sequence[str]) -> str:
    """The primary category (the first tag; ``unknown`` when there is none)."""
    tags = label.function_tags if isinstance(label, ChunkLabel) else list(label)
    return tags[0] if tags else Tag.UNKNOWN.value


@runtime_checkable
class Labeler(Protocol):
    """Anything that labels every chunk of a trace."""

    def label(self, problem: str, chunks: Sequence[str]) -> list[ChunkLabel]: ...


class LabelerError(RuntimeError):
    """The labeling endpoint could not be reached or answered with something unusable."""


# ----- rule-based labeler -----------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:\.\d+)?")
_OPERATOR = r"(?:[-+*/×÷^]|\\times|\\cdot|\\div|\\frac|plus|minus|times|divided by|multiplied by|over)"
_OPERAND = r"(?:\d+(?:\.\d+)?|\b[a-z]\b|\\frac\{[^{}]*\}\{[^{}]*\}|\([^()]*\))"
_ARITHMETIC = re.compile(rf"{_OPERAND}\s*{_OPERATOR}\s*{_OPERAND}", re.I)
_EQUALS = re.compile(r"=|\bequals?\b|\bis\b|\bgives\b|\bmakes\b", re.I)
_FINAL = re.compile(r"\\boxed|\bthe (?:final )?answer (?:is|should be|would be)\b|\bfinal answer\b|"
                    r"\b(?:at|in) the end\b", re.I)
_DOUBT = re.compile(r"\b(?:wrong|not right|mistake|incorrect|made an error|not sure|unsure|confus\w*|"
                    r"doesn'?t (?:seem|make sense)|reconsider|rethink|backtrack|misread|oops)\b", re.I)
_DOUBT_OPENER = re.compile(r"^(?:wait|actually|hold on|oops|but wait|no,|hmm,? (?:wait|but|actually|no|maybe|that))\b", re.I)
_CHECK = re.compile(r"\b(?:check\w*|verif\w*|double-check\w*|confirm\w*|sanity|plug\w* (?:it|this|that|back)|"
                    r"matches|consistent)\b", re.I)
_FACT = re.compile(
    r"\b(?:a|an|one)\s+(?:dozen|week|day|hour|minute|year|decade|century|foot|yard|mile|meter|metre|"
    r"kilometer|kilogram|pound|gallon|quart|score|gross|leap year)\s+(?:is|has|equals|contains|consists of)\b|"
    r"\bthere are \d+ \w+ in (?:a|an|one|each|every) \w+|"
    r"\b(?:recall|remember) that\b|\bby definition\b|\bis defined as\b|\bthe formula (?:for|is)\b|"
    r"\b(?:theorem|identity|formula) (?:says|states|gives)\b|\bwe know that\b|\bis a prime\b",
    re.I,
)
_PLAN_OPENER = re.compile(
    r"^(?:first(?:ly)?|then|next|now,? (?:i|we|let)|i need to|we need to|i should|we should|i will|i'll|we will|"
    r"let'?s|let me|let us|to (?:find|solve|compute|calculate|get|determine)|my plan|the plan|"
    r"the (?:strategy|approach|idea) is|step \d+)\b",
    re.I,
)
_PLAN_CONTENT = re.compile(
    r"\d|\b(?:add|subtract|multiply|divide|comput\w*|calculat\w*|find|solve|determine|use|set up|express|"
    r"substitut\w*|simplif\w*|factor\w*|convert|count|sum|apply|plug|denote|write|figure out|consider|"
    r"break|start (?:from|with|by)|then)\b",
    re.I,
)
_SETUP_OPENER = re.compile(r"^(?:the (?:problem|question) (?:says|asks|states|gives|is)|we(?:'re| are) given|"
                           r"given (?:that|the)|okay,? so (?:the|we|i)|so,? the problem)\b", re.I)
_CONSOLIDATE = re.compile(r"^(?:so|therefore|thus|hence|in total|altogether|overall|that means|this gives|"
                          r"which means|putting (?:it|this) together)\b|\b(?:total|in total|altogether|now has|"
                          r"in all)\b", re.I)
_WORD = re.compile(r"[A-Za-z]+")

_PRIORITY = (
    Tag.FINAL_ANSWER_EMISSION,
    Tag.UNCERTAINTY_MANAGEMENT,
    Tag.SELF_CHECKING,
    Tag.FACT_RETRIEVAL,
    Tag.ACTIVE_COMPUTATION,
    Tag.PROBLEM_SETUP,
    Tag.PLAN_GENERATION,
    Tag.RESULT_CONSOLIDATION,
)


def _numbers(text: str) -> set[str]:
    out = set()
    for m in _NUMBER.finditer(text):
        s = m.group(0).replace(",", "")
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        out.add(s)
    return out


def _is_computation(text: str) -> bool:
    """Arithmetic carried out: an operation between operands and a result (``=``, "is", …)."""
    return bool(_ARITHMETIC.search(text)) and bool(_EQUALS.search(text))


def _summary(tag: Tag, text: str) -> str:
    nums = _NUMBER.findall(text)
    last = nums[-1] if nums else ""
    words = {
        Tag.PROBLEM_SETUP: "restate problem",
        Tag.PLAN_GENERATION: "plan steps",
        Tag.FACT_RETRIEVAL: "recall fact",
        Tag.ACTIVE_COMPUTATION: f"compute {last}" if last else "compute",
        Tag.RESULT_CONSOLIDATION: f"consolidate {last}" if last else "consolidate result",
        Tag.UNCERTAINTY_MANAGEMENT: "flag error" if _DOUBT.search(text) else "reconsider step",
        Tag.FINAL_ANSWER_EMISSION: f"state answer {last}" if last else "state answer",
        Tag.SELF_CHECKING: "verify result",
        Tag.UNKNOWN: "filler",
    }[tag]
    if len(words.split()) < 2:
        words += " step"
    return words


class RuleLabeler:
    """Offline labels from keyword and pattern rules (the default labeler).

    Rules, in the priority order that decides the first tag: ``\\boxed`` / "the answer is"
    / "at the end" or a closing "So …" as the last chunk → final_answer_emission; "Wait",
    "Actually", "Hmm, that…" or words of doubt ("wrong", "mistake") →
    uncertainty_management; "check" / "verify" / "matches" → self_checking; known facts
    ("a dozen is 12", "there are 60 minutes in an hour", "recall that") → fact_retrieval;
    arithmetic with a result (``3 + 5 = 8``, "6 times 12 is 72") → active_computation;
    restating the problem's numbers before any reasoning → problem_setup; "First", "Then",
    "I need to", "Let's" with an operation or a number → plan_generation; "So" /
    "Therefore" / "Thus" / "total" → result_consolidation; anything else → unknown. A bare
    "Hmm," or "Let me think" without content stays unknown (filler).

    ``depends_on`` lists the earlier chunks that share a number with the chunk.
    """

    def label(self, problem: str, chunks: Sequence[str]) -> list[ChunkLabel]:
        problem_numbers = _numbers(problem)
        problem_words = {w.lower() for w in _WORD.findall(problem) if len(w) > 3}
        numbers = [_numbers(c) for c in chunks]
        labels = []
        in_setup = True  # still in the leading run of setup/filler chunks
        for i, text in enumerate(chunks):
            s = text.strip()
            tags: set[Tag] = set()
            last = i == len(chunks) - 1
            if _FINAL.search(s) or (last and _CONSOLIDATE.match(s) and numbers[i]):
                tags.add(Tag.FINAL_ANSWER_EMISSION)
            if _DOUBT.search(s) or _DOUBT_OPENER.match(s) or re.match(r"^but\b", s, re.I):
                tags.add(Tag.UNCERTAINTY_MANAGEMENT)
            if _CHECK.search(s):
                tags.add(Tag.SELF_CHECKING)
            if _FACT.search(s):
                tags.add(Tag.FACT_RETRIEVAL)
            computing = _is_computation(s)
            if computing:
                tags.add(Tag.ACTIVE_COMPUTATION)
            words = {w.lower() for w in _WORD.findall(s) if len(w) > 3}
            restates = bool(numbers[i] & problem_numbers) or (len(words & problem_words) >= 3 and not numbers[i])
            if in_setup and not computing and (_SETUP_OPENER.match(s) or (restates and not _PLAN_OPENER.match(s))):
                tags.add(Tag.PROBLEM_SETUP)
            opener = _PLAN_OPENER.match(s)
            if opener and _PLAN_CONTENT.search(s[opener.end():]) and not computing:
                tags.add(Tag.PLAN_GENERATION)
            if _CONSOLIDATE.search(s):
                tags.add(Tag.RESULT_CONSOLIDATION)
            ordered = [t for t in _PRIORITY if t in tags] or [Tag.UNKNOWN]
            if Tag.SELF_CHECKING in tags and Tag.UNCERTAINTY_MANAGEMENT in tags and not _DOUBT.search(s):
                ordered.remove(Tag.SELF_CHECKING)  # "Actually, let me verify": a check, not a doubt
                ordered.insert(ordered.index(Tag.UNCERTAINTY_MANAGEMENT), Tag.SELF_CHECKING)
            if ordered[0] not in (Tag.PROBLEM_SETUP, Tag.UNKNOWN):
                in_setup = False
            depends = [j for j in range(i) if numbers[i] & numbers[j]]
            labels.append(ChunkLabel([t.value for t in ordered], depends, _summary(ordered[0], s)))
        return labels


# ----- LLM labeler ------------------------------------------------------------------------------

_PROMPT = """You label the sentences ("chunks") of a model's reasoning trace for a math problem.

Categories (a chunk may have several; put the most fitting first):
{categories}

For each chunk also give "depends_on": the indices of earlier chunks whose results or \
ideas this chunk directly uses (an empty list if none), and "summary": a 2-4 word, lowercase \
description of what the chunk does concretely (e.g. "compute 6*12=72", "plan subtraction", \
"check answer").

Problem:
{problem}

Chunks:
{chunks}
Answer with one JSON object only, with one entry per chunk keyed by the chunk index as a string:
{{"0": {{"function_tags": ["problem_setup"], "depends_on": [], "summary": "restate problem"}}, "1": {{...}}}}"""


def labeling_prompt(problem: str, chunks: Sequence[str]) -> str:
    """The labeling prompt: category definitions, the problem and every chunk as "Chunk i:\\n…"."""
    categories = "\n".join(f"- {tag}: {CATEGORY_DEFINITIONS[tag]}" for tag in TAGS)
    listing = "".join(f"Chunk {i}:\n{c}\n\n" for i, c in enumerate(chunks))
    return _PROMPT.format(categories=categories, problem=problem, chunks=listing)


def _normalise_tag(tag: Any) -> str:
    t = re.sub(r"[\s-]+", "_", str(tag).strip().lower())
    return t if t in TAGS else Tag.UNKNOWN.value


def parse_labels(obj: Any, n_chunks: int) -> list[ChunkLabel]:
    """Validate a labeler's JSON answer into ``n_chunks`` labels.

    ``obj`` is the decoded answer, or the reply text holding it (the first JSON object is read, so
    code fences or words around it are skipped). Accepts ``{"0": {...}, "1": {...}}`` or
    ``{"chunks": [{"chunk_idx": 0, ...}, ...]}``. Unknown tags become ``unknown``; ``depends_on``
    keeps only earlier indices; a chunk the answer leaves out is labelled ``unknown`` (with a warning).
    """
    if isinstance(obj, str):
        try:
            obj = _first_json_object(obj)
        except ValueError as e:
            raise LabelerError(f"the labeler answered without a JSON labeling ({e}): {obj[:300]!r}") from None
    entries: dict[int, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("chunks"), list):
        for pos, e in enumerate(obj["chunks"]):
            if isinstance(e, dict):
                idx = e.get("chunk_idx", e.get("index", pos))
                entries[_as_int(idx, pos)] = e
    elif isinstance(obj, dict):
        for key, e in obj.items():
            idx = _as_int(str(key).replace("chunk", "").strip(" _"), None)
            if idx is not None and isinstance(e, dict):
                entries[idx] = e
    else:
        raise LabelerError(f"the labeler answered {type(obj).__name__}, expected a JSON object keyed by chunk index")
    missing = [i for i in range(n_chunks) if i not in entries]
    if missing:
        log.warning("labeler gave no label for chunks %s: labelled unknown", missing)
    labels = []
    for i in range(n_chunks):
        e = entries.get(i, {})
        tags = e.get("function_tags", e.get("categories", []))
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags = list(dict.fromkeys(_normalise_tag(t) for t in tags)) or [Tag.UNKNOWN.value]
        deps = e.get("depends_on", [])
        deps = [deps] if isinstance(deps, (int, str)) else list(deps or [])
        deps = sorted({d for d in (_as_int(x, None) for x in deps) if d is not None and 0 <= d < i})
        summary = e.get("summary", "")
        labels.append(ChunkLabel(tags, deps, summary.strip() if isinstance(summary, str) else ""))
    return labels


def _as_int(x: Any, default):
    try:
        return int(x)
    except (TypeError, ValueError):
        return default


class LLMLabeler:
    """Labels from an OpenAI-compatible chat endpoint: one ``{base_url}/chat/completions`` request per
    trace through the ``openai`` client, temperature 0, ``response_format`` JSON, no retries (a failure
    raises :class:`LabelerError` at once). ``api_key`` defaults to ``$OPENAI_API_KEY`` when set (a local
    server needs none)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 240.0,
                 max_tokens: int | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_tokens = max_tokens

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def request_body(self, problem: str, chunks: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": labeling_prompt(problem, chunks)}],
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    @functools.cached_property
    def client(self):
        """One ``openai`` client for every trace (its connection pool is reused)."""
        from openai import OpenAI

        # The client insists on a key: without one, a placeholder whose Authorization header ``label`` leaves out.
        return OpenAI(base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout, max_retries=0)

    def label(self, problem: str, chunks: Sequence[str]) -> list[ChunkLabel]:
        from openai import APIConnectionError, APIError, APIStatusError, Omit

        no_key = None if self.api_key else {"Authorization": Omit()}
        offline = "label offline with probes.anchors.taxonomy.RuleLabeler() instead"
        try:
            reply = self.client.chat.completions.create(**self.request_body(problem, chunks), extra_headers=no_key)
        except APIStatusError as e:
            detail = e.response.text[:300]
            raise LabelerError(f"labeler endpoint {self.url} answered HTTP {e.status_code}: {detail}; "
                               f"check the URL, model name and API key, or {offline}") from e
        except APIConnectionError as e:  # refused, unreachable, timed out (APITimeoutError)
            reason = e.__cause__ or e
            raise LabelerError(f"could not reach the labeler endpoint {self.url} ({reason}); {offline}") from e
        except (APIError, ValueError) as e:  # answered 2xx with a body that is not a chat completion (or not JSON)
            raise LabelerError(f"labeler endpoint {self.url} answered without a JSON labeling ({e}); {offline}") from e
        choices = getattr(reply, "choices", None) or [None]
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            raw = reply.model_dump_json() if hasattr(reply, "model_dump_json") else str(reply)
            raise LabelerError(f"labeler endpoint {self.url} answered without a JSON labeling (no message content): "
                               f"{raw[:300]!r}; {offline}")
        try:
            return parse_labels(content, len(chunks))
        except LabelerError as e:
            raise LabelerError(f"labeler endpoint {self.url}: {e}; {offline}") from None


def _first_json_object(text: str) -> Any:
    """The JSON object in a reply, tolerating code fences or text around it."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the reply")
    return json.JSONDecoder().raw_decode(text[start:])[0]
