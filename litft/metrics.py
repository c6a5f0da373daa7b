"""Text-generation scores for ``evaluate``: ROUGE-1/2/L, BLEU-4 and exact match, all × 100, CJK-aware.

Tokens: every CJK character (Han, kana, Hangul) is one token, as Chinese ROUGE is usually computed; other text is
tokenized by ``rouge-score``'s default tokenizer (lower-cased ASCII letters and digits; Porter stemming for ROUGE).
Without the CJK rule, rouge-score drops Chinese text entirely and scores every Chinese pair 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from litft.errors import LitFTError

ROUGE = ("rouge1", "rouge2", "rougeL")
METRICS = ROUGE + ("bleu4", "exact_match")

_CJK = re.compile(
    "([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002ebef])"
)


class CJKTokenizer:
    """rouge-score tokenizer interface (``tokenize(text) -> list[str]``): one token per CJK character, rouge-score's
    default tokenization (optionally stemmed) for the rest."""

    def __init__(self, use_stemmer: bool = True):
        try:  # an optional dependency (litft[eval]), imported when scoring
            from rouge_score.tokenizers import DefaultTokenizer
        except ImportError:
            raise LitFTError("evaluate needs the rouge-score package: pip install 'litft[eval]'") from None
        self._default = DefaultTokenizer(use_stemmer=use_stemmer)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in _CJK.split(text):
            if not piece:
                continue
            if _CJK.fullmatch(piece):
                tokens.append(piece)
            else:
                tokens.extend(self._default.tokenize(piece))
        return tokens


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure × 100 over the pairs."""
    if not predictions:
        raise LitFTError("evaluate: no predictions to score")
    tokenizer = CJKTokenizer(use_stemmer=True)  # without rouge-score: its one-line error
    from rouge_score import rouge_scorer  # optional dependency (litft[eval]), imported when scoring

    scorer = rouge_scorer.RougeScorer(list(ROUGE), tokenizer=tokenizer)
    totals = dict.fromkeys(ROUGE, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for m in ROUGE:
            totals[m] += scores[m].fmeasure
    return {m: 100.0 * totals[m] / len(predictions) for m in ROUGE}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 × 100 (Papineni et al.: clipped 1-4-gram precisions pooled over the corpus, geometric mean,
    brevity penalty), one reference per prediction, no smoothing, tokens as for ROUGE without stemming."""
    tok = CJKTokenizer(use_stemmer=False)
    matches, totals = [0] * 4, [0] * 4
    pred_len = ref_len = 0
    for pred, ref in zip(predictions, references):
        p, r = tok.tokenize(pred), tok.tokenize(ref)
        pred_len, ref_len = pred_len + len(p), ref_len + len(r)
        for n in range(1, 5):
            pc, rc = _ngrams(p, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return 100.0 * brevity * math.exp(log_precision)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share × 100 of predictions equal to their reference (whitespace runs collapsed, ends stripped)."""
    norm = lambda s: " ".join(s.split())  # noqa: E731
    return 100.0 * sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / max(len(predictions), 1)


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Every metric of :data:`METRICS` for the pairs."""
    return {**rouge(predictions, references), "bleu4": bleu4(predictions, references),
            "exact_match": exact_match(predictions, references)}
