"""The SQuAD v1.1 metric: exact match and token F1 after normalising both answers.

    normalize_answer(s): lower-case -> drop punctuation -> drop the articles a, an, the
                         -> collapse whitespace          ("The Eiffel-Tower!" -> "eiffeltower")
    exact_match(pred, gold) = 1 if normalize(pred) == normalize(gold) else 0
    f1(pred, gold):  P, G = the normalised answers split on whitespace (bags of words)
                     common = |P ∩ G| counted with multiplicity
                     0 when common == 0, else 2 * precision * recall / (precision + recall)
                     with precision = common / |P|, recall = common / |G|

A question may have several gold answers: each score is the best over them. The data set's
EM and F1 are the means over all questions, times 100; a question without a prediction
scores 0.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(char for char in text if char not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def max_over_gold(score, prediction: str, golds) -> float:
    """The best score of ``prediction`` against any of the gold answers."""
    return max(score(prediction, gold) for gold in golds)


def squad_evaluate(examples, predictions: dict) -> dict:
    """{"exact_match": EM, "f1": F1} (both in [0, 100]) over the examples that have answers.

    ``examples``: SquadExample objects (minibert.data.finetuning) or (id, [gold texts]) pairs;
    ``predictions``: {question id: predicted text}.
    """
    if not isinstance(predictions, dict):
        raise TypeError(f"predictions must be a dict {{question id: text}}, got {type(predictions).__name__}")
    em = f1 = 0.0
    count = answered = 0
    for example in examples:
        if isinstance(example, tuple):
            qid, golds = example
            if isinstance(golds, str):
                raise TypeError(f"question {qid!r}: the gold answers must be a list of str, got the str {golds!r}")
        else:
            qid, golds = example.id, [answer.text for answer in example.answers]
        if not golds:
            continue
        count += 1
        if qid not in predictions:
            continue                                   # unanswered: scores 0
        answered += 1
        em += max_over_gold(exact_match_score, predictions[qid], golds)
        f1 += max_over_gold(f1_score, predictions[qid], golds)
    if count == 0:
        raise ValueError("no question with a gold answer to evaluate")
    if answered == 0 and predictions:
        raise ValueError(f"none of the {len(predictions)} predictions is for a question id of the examples "
                         f"(e.g. {next(iter(predictions))!r} against {qid!r}): are the ids of the same type?")
    return {"exact_match": 100.0 * em / count, "f1": 100.0 * f1 / count, "questions": count}
