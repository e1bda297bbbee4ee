"""Caption metrics with pycocoevalcap 1.2's numbers, in pure Python/NumPy.

Classes mirror pycocoevalcap (switch by changing the import): `PTBTokenizer().tokenize(dict)`,
`Bleu(4)`, `Rouge()`, `Cider()`, `CiderD()`, `Meteor()`, `Spice()`, each with
`compute_score(gts, res)`. `score(refs, preds)` does everything from raw strings in one call;
`CiderDReward` gives batched CIDEr-D rewards for self-critical training.
"""
from imcap.metrics.bleu import Bleu
from imcap.metrics.cider import Cider, CiderD, CiderDReward, DocumentFrequency
from imcap.metrics.meteor import Meteor, MetricUnavailable
from imcap.metrics.rouge import Rouge
from imcap.metrics.scoring import ALL_METRICS, Evaluation, evaluate, metric_names, score
from imcap.metrics.spice import Spice
from imcap.metrics.tokenizer import PUNCTUATIONS, PTBTokenizer

__all__ = [
    "ALL_METRICS",
    "Bleu",
    "Cider",
    "CiderD",
    "CiderDReward",
    "DocumentFrequency",
    "Evaluation",
    "Meteor",
    "MetricUnavailable",
    "PTBTokenizer",
    "PUNCTUATIONS",
    "Rouge",
    "Spice",
    "evaluate",
    "metric_names",
    "score",
]
