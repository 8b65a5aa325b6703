"""Text comparisons of the reward: ROUGE for free-form answers and object-name matching.

ROUGE uses `rouge_score` exactly as the reference does (`rouge1/2/L` F1, Porter stemming) so the
numbers are the same, but the scorer is built once per process and its tokenizer memoises: the
ground-truth answer is shared by every completion of a group and most words repeat, so stemming
(the dominant cost) is done once per distinct word instead of once per occurrence.
"""

from __future__ import annotations

import functools
import re

from rouge_score import rouge_scorer, tokenize
from rouge_score.tokenizers import Tokenizer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MAX_ROUGE_CHARS = 4096
"""Predicted answers are cut to this many characters before ROUGE: rougeL is O(n·m) in tokens, and an
answer this far beyond a one-sentence truth scores ~0 anyway."""

_ARTICLES = frozenset({"a", "an", "the"})
_WORDS = re.compile(r"[a-z0-9]+")


class _MemoStemTokenizer(Tokenizer):
    """`rouge_score`'s default tokenizer (lower-case, non-alphanumerics to spaces, Porter stem for
    tokens longer than 3 chars) with per-word and per-text caches. Same tokens, fewer stem calls."""

    def __init__(self) -> None:
        from nltk.stem import porter

        stemmer = porter.PorterStemmer()
        self._stem = functools.lru_cache(maxsize=65536)(stemmer.stem)
        self.tokenize = functools.lru_cache(maxsize=4096)(self._tokenize)  # type: ignore[method-assign]

    def _tokenize(self, text: str) -> list[str]:
        text = tokenize.NON_ALPHANUM_RE.sub(" ", text.lower())
        stem = self._stem
        tokens = [stem(x) if len(x) > 3 else x for x in tokenize.SPACES_RE.split(text)]
        return [x for x in tokens if tokenize.VALID_TOKEN_RE.match(x)]

    def tokenize(self, text: str) -> list[str]:  # replaced per instance by the memoised version
        return self._tokenize(text)


@functools.lru_cache(maxsize=1)
def rouge() -> rouge_scorer.RougeScorer:
    """The process-wide scorer (built on first use)."""
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True, tokenizer=_MemoStemTokenizer())


def rouge_mean_f1(reference: str, prediction: str) -> float:
    """Mean of ROUGE-1/2/L F-measures of `prediction` against `reference`, in [0, 1]."""
    scores = rouge().score(reference, prediction[:MAX_ROUGE_CHARS])
    return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3.0


@functools.lru_cache(maxsize=4096)
def normalize_object_name(name: str) -> str:
    """Canonical object name for matching: lower-case words, leading articles dropped, a plural `s`
    stripped from the last word ("The red cars" == "red car"). Both sides go through it."""
    words = _WORDS.findall(name[:256].lower())
    while words and words[0] in _ARTICLES:
        words.pop(0)
    if words and len(words[-1]) > 3 and words[-1].endswith("s") and not words[-1].endswith("ss"):
        words[-1] = words[-1][:-1]
    return " ".join(words)
