"""Answer judges for V-STAR accuracy.

The reference scores answers with an LLM (0–3, correct ≥ 2). That is slow, needs a large model and is
not reproducible, so the default here is deterministic: the option letter when the question is
multiple choice, else a normalized exact match, else ROUGE-L F1 ≥ 0.5. The judge is a plain callable
so an LLM judge can be plugged in (:data:`JUDGES`, ``stgrl eval vstar --judge``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Protocol

from stgrl.orchestration.evaluation.geometry import answer_text
from stgrl.reward_service.parser import parse_option_letter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


class Judge(Protocol):
    """Decides whether a candidate answer is correct. Must be deterministic for a given input."""

    def __call__(
        self, question: str, reference: str, candidate: str, options: Sequence[str] | None = None
    ) -> bool: ...


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style normalization)."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def option_letter(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter of an answer, read as the reward reads it
    (:func:`stgrl.reward_service.parser.parse_option_letter`: ``Correct Option: B`` anywhere, else an
    answer starting ``B``, ``B.``, ``(B)``, ``[B]``, ``B. text``; the letter followed by a delimiter
    or the end, so "A man is walking" is not option A), or None.

    With ``options`` given, a bare option text (``"red"`` for ``"B. red"``) also maps to its letter,
    and letters outside the option range are rejected.
    """
    text = answer_text(text)
    letters = [chr(ord("A") + i) for i in range(len(options))] if options else None
    letter = parse_option_letter(text)
    if letter is not None and (letters is None or letter in letters):
        return letter
    if options:
        norm = normalize_answer(text)
        for opt_letter, opt in zip(letters or [], options):
            body = re.sub(r"^\s*[A-Z][\.\)]\s*", "", opt)
            if norm and norm == normalize_answer(body):
                return opt_letter
    return None


class DeterministicJudge:
    """Option match / normalized exact match / ROUGE-L F1 ≥ ``rouge_threshold``.

    The ROUGE scorer (with stemming, as docs/design.md §12) is built once per judge, not per answer.
    """

    def __init__(self, rouge_threshold: float = 0.5) -> None:
        from rouge_score import rouge_scorer

        self.rouge_threshold = rouge_threshold
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def rouge_l(self, reference: str, candidate: str) -> float:
        """ROUGE-L F1 of the candidate against the reference."""
        return float(self._scorer.score(reference, candidate)["rougeL"].fmeasure)

    def __call__(
        self, question: str, reference: str, candidate: str, options: Sequence[str] | None = None
    ) -> bool:
        cand = answer_text(candidate or "")
        if not cand:
            return False
        ref_letter = option_letter(reference, options) if options or len(reference.strip()) <= 3 else None
        if ref_letter is not None:
            return option_letter(cand, options) == ref_letter
        if normalize_answer(cand) == normalize_answer(reference):
            return True
        return self.rouge_l(reference, cand) >= self.rouge_threshold


class ExactJudge:
    """Normalized exact match only (a strict lower bound on the deterministic judge)."""

    def __call__(
        self, question: str, reference: str, candidate: str, options: Sequence[str] | None = None
    ) -> bool:
        ref_letter = option_letter(reference, options) if options else None
        if ref_letter is not None:
            return option_letter(candidate, options) == ref_letter
        return bool(candidate) and normalize_answer(answer_text(candidate)) == normalize_answer(reference)


JUDGES: dict[str, Callable[[], Judge]] = {"deterministic": DeterministicJudge, "exact": ExactJudge}


def make_judge(name: str) -> Judge:
    """Build a registered judge by name; the error lists the valid names."""
    try:
        return JUDGES[name]()
    except KeyError:
        raise ValueError(f"unknown judge {name!r}; valid: {', '.join(sorted(JUDGES))}") from None
