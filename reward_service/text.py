"""Text comparisons of the reward: ROUGE for free-form answers and object-name matching.

ROUGE gives the same numbers as `rouge_score` with `RougeScorer(['rouge1','rouge2','rougeL'],
use_stemmer=True)` (the reference's scorer): the same tokenizer and Porter stemmer, built once per
process. The counting is done here, because the library's per-call overhead dominated the reward:
- stems are memoised per word (words repeat), so stemming - the costly part - happens once per
  distinct word; the reference's tokens, n-gram counts and LCS bit masks once per reference text (a
  group's completions share their ground truth: `RougeReference`);
- one pass over the prediction's tokens counts the clipped unigram and bigram overlaps and advances
  the LCS, which uses the bit-parallel algorithm (Hyyrö 2004) on Python integers: O(n·m/64) instead
  of the library's O(n·m) table of Python lists.
`rouge_library_mean_f1` is the reference twin; the tests check both agree to 1e-12.
"""

from __future__ import annotations

import functools
import re

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MAX_ROUGE_CHARS = 4096
"""Predicted answers are cut to this many characters before ROUGE (an answer this far beyond a
one-sentence truth scores ~0 anyway, and it bounds the work per sample)."""

_ARTICLES = frozenset({"a", "an", "the"})
_WORDS = re.compile(r"[a-z0-9]+")
_PLAIN = re.compile(r"[a-z0-9 ]*+").fullmatch


class _Tokenizer:
    """`rouge_score`'s DefaultTokenizer(use_stemmer=True) with per-word and per-text memoisation:
    lower-case, split into maximal `[a-z0-9]+` runs (what the library's substitute-non-alphanumerics-
    then-split yields), Porter-stem tokens longer than 3 characters. The memos are plain dicts
    (cleared when full): an `lru_cache` wrapper cost more per call than the lookups it saved."""

    MAX_WORDS = 65536
    MAX_TEXTS = 4096

    def __init__(self) -> None:
        from nltk.stem import porter

        self._porter = porter.PorterStemmer().stem
        self._stems: dict[str, str] = {}
        self._texts: dict[str, tuple[str, ...]] = {}

    def _stem(self, word: str) -> str:
        stems = self._stems
        if len(stems) >= self.MAX_WORDS:
            stems.clear()
        stem = stems[word] = self._porter(word) if len(word) > 3 else word
        return stem

    def tokenize(self, text: str) -> tuple[str, ...]:
        """Tokens of `text`, memoised per text."""
        toks = self._texts.get(text)
        if toks is None:
            toks = self.tokenize_once(text)
            if len(self._texts) >= self.MAX_TEXTS:
                self._texts.clear()
            self._texts[text] = toks
        return toks

    def tokenize_once(self, text: str) -> tuple[str, ...]:
        """Tokens of `text`, not memoised (predictions rarely repeat, and a group's repeats are
        caught earlier, by answer text)."""
        # every run is [a-z0-9]+ (stems of such words too), so the library's final VALID_TOKEN_RE
        # filter drops nothing
        low = text.lower()
        if _PLAIN(low) is not None:
            words = low.split()  # only [a-z0-9] and spaces: the runs are the space-separated words
        else:
            words = _WORDS.findall(low)
        toks = tuple(map(self._stems.get, words))  # known words: one C-level pass
        if None in toks:
            get, stem = self._stems.get, self._stem
            toks = tuple([get(w) or stem(w) for w in words])
        return toks


@functools.lru_cache(maxsize=1)
def _tokenizer() -> _Tokenizer:
    return _Tokenizer()


class RougeReference:
    """What ROUGE needs of a reference text, computed once per text (a group's completions share their
    ground truth): tokens, unigram and bigram counts (plain dicts), LCS bit masks."""

    __slots__ = ("tokens", "unigrams", "bigrams", "masks")

    def __init__(self, text: str) -> None:
        toks = _tokenizer().tokenize(text)
        self.tokens = toks
        uni: dict[str, int] = {}
        bi: dict[tuple[str, str], int] = {}
        masks: dict[str, int] = {}
        prev = None
        for i, tok in enumerate(toks):
            uni[tok] = uni.get(tok, 0) + 1
            masks[tok] = masks.get(tok, 0) | (1 << i)
            if i:
                key = (prev, tok)
                bi[key] = bi.get(key, 0) + 1
            prev = tok
        self.unigrams, self.bigrams, self.masks = uni, bi, masks


@functools.lru_cache(maxsize=1024)
def rouge_reference(text: str) -> RougeReference:
    """The memoised `RougeReference` of a (stripped) reference text."""
    return RougeReference(text)


def rouge_mean_f1_ref(ref: RougeReference, prediction: str) -> float:
    """`rouge_mean_f1` against a prepared reference. One pass over the prediction's tokens computes
    the clipped unigram and bigram overlaps (by spending copies of the reference's counts; a bigram is
    looked up only when both its tokens occur in the reference) and advances the bit-parallel LCS."""
    pred = _tokenizer().tokenize_once(prediction[:MAX_ROUGE_CHARS])
    toks = ref.tokens
    n_ref, n_pred = len(toks), len(pred)
    if not n_ref and not n_pred:
        return 0.0
    left1 = ref.unigrams.copy()
    left2 = ref.bigrams.copy()
    masks = ref.masks
    full = (1 << n_ref) - 1
    v = full
    o1 = o2 = 0
    prev = None  # the previous token when it occurs in the reference
    for tok in pred:
        m = masks.get(tok)
        if m:
            c = left1[tok]
            if c:
                left1[tok] = c - 1
                o1 += 1
            if prev is not None:
                c = left2.get((prev, tok))
                if c:
                    left2[(prev, tok)] = c - 1
                    o2 += 1
            prev = tok
            u = v & m
            v = ((v + u) | (v - u)) & full
        else:
            prev = None
    # _f1 of each, inlined (same operations: max(n, 1) as a comparison, then p, r, 2pr/(p+r))
    dp = n_pred if n_pred > 1 else 1
    dr = n_ref if n_ref > 1 else 1
    p, r = o1 / dp, o1 / dr
    r1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    dp2 = n_pred - 1 if n_pred > 2 else 1  # max(max(n - 1, 0), 1)
    dr2 = n_ref - 1 if n_ref > 2 else 1
    p, r = o2 / dp2, o2 / dr2
    r2 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    if n_ref and n_pred:
        lcs = n_ref - v.bit_count()
        p, r = lcs / dp, lcs / dr
        rl = 2 * p * r / (p + r) if p + r > 0 else 0.0
    else:
        rl = 0.0
    return (r1 + r2 + rl) / 3.0


def rouge_mean_f1(reference: str, prediction: str) -> float:
    """Mean of ROUGE-1/2/L F-measures of `prediction` against `reference`, in [0, 1]."""
    return rouge_mean_f1_ref(rouge_reference(reference), prediction)


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
    rouge_reference.cache_clear()
    normalize_object_name.cache_clear()
