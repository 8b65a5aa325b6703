"""Text comparisons of the reward: ROUGE for free-form answers and object-name matching.

ROUGE gives the same numbers as `rouge_score` with `RougeScorer(['rouge1','rouge2','rougeL'],
use_stemmer=True)` (the reference's scorer): the same tokenizer and Porter stemmer, built once per
process. The counting is done here, because the library's per-call overhead dominated the reward:
- tokens are memoised per text and stems per word (the ground truth is shared by every completion of
  a group, and words repeat), so stemming - the costly part - happens once per distinct word;
- the truth's n-gram counts and LCS bit masks are memoised per truth text;
- the LCS length uses the bit-parallel algorithm (Hyyrö 2004) on Python integers: O(n·m/64) instead
  of the library's O(n·m) table of Python lists.
`rouge_library_mean_f1` is the reference twin; the tests check both agree to 1e-12.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

from rouge_score import tokenize

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MAX_ROUGE_CHARS = 4096
"""Predicted answers are cut to this many characters before ROUGE (an answer this far beyond a
one-sentence truth scores ~0 anyway, and it bounds the work per sample)."""

_ARTICLES = frozenset({"a", "an", "the"})
_WORDS = re.compile(r"[a-z0-9]+")


class _Tokenizer:
    """`rouge_score`'s DefaultTokenizer(use_stemmer=True) with per-word and per-text memoisation:
    lower-case, non-alphanumerics to spaces, split, Porter-stem tokens longer than 3 characters."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stem = functools.lru_cache(maxsize=65536)(porter.PorterStemmer().stem)
        self.tokenize = functools.lru_cache(maxsize=4096)(self._tokenize)

    def _tokenize(self, text: str) -> tuple[str, ...]:
        text = tokenize.NON_ALPHANUM_RE.sub(" ", text.lower())
        stem = self._stem
        # after the substitution every piece is [a-z0-9]* (stems of such words too), so the library's
        # final VALID_TOKEN_RE filter only drops empty pieces
        return tuple(stem(x) if len(x) > 3 else x for x in text.split() if x)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> _Tokenizer:
    return _Tokenizer()


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    """F-measure exactly as rouge_score computes it (denominators floored at 1)."""
    p = overlap / max(n_pred, 1)
    r = overlap / max(n_ref, 1)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _lcs_masks(tokens: tuple[str, ...]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_length(ref_masks: dict[str, int], n_ref: int, pred: tuple[str, ...]) -> int:
    """Length of the longest common subsequence, bit-parallel over the reference's positions."""
    full = (1 << n_ref) - 1
    v = full
    for tok in pred:
        m = ref_masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return n_ref - v.bit_count()


@functools.lru_cache(maxsize=1024)
def _reference_profile(text: str) -> tuple[tuple[str, ...], Counter, Counter, dict[str, int]]:
    toks = _tokenizer().tokenize(text)
    return toks, Counter(toks), Counter(zip(toks, toks[1:])), _lcs_masks(toks)


def rouge_mean_f1(reference: str, prediction: str) -> float:
    """Mean of ROUGE-1/2/L F-measures of `prediction` against `reference`, in [0, 1]."""
    ref, ref1, ref2, masks = _reference_profile(reference)
    pred = _tokenizer().tokenize(prediction[:MAX_ROUGE_CHARS])
    if not ref and not pred:
        return 0.0
    pred1 = Counter(pred)
    pred2 = Counter(zip(pred, pred[1:]))
    get1, get2 = pred1.get, pred2.get
    r1 = _f1(sum(min(c, get1(g, 0)) for g, c in ref1.items()), len(pred), len(ref))
    r2 = _f1(sum(min(c, get2(g, 0)) for g, c in ref2.items()), max(len(pred) - 1, 0), max(len(ref) - 1, 0))
    rl = _f1(lcs_length(masks, len(ref), pred), len(pred), len(ref)) if ref and pred else 0.0
    return (r1 + r2 + rl) / 3.0


def rouge_library_mean_f1(reference: str, prediction: str) -> float:
    """Reference twin: the same number straight from `rouge_score` (slow; tests and audits only)."""
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True).score(reference, prediction[:MAX_ROUGE_CHARS])
    return (sc["rouge1"].fmeasure + sc["rouge2"].fmeasure + sc["rougeL"].fmeasure) / 3.0


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


def reset_caches() -> None:
    """Forget memoised tokens, stems and names (benchmarks measure cold passes with it)."""
    _tokenizer.cache_clear()
    _reference_profile.cache_clear()
    normalize_object_name.cache_clear()
