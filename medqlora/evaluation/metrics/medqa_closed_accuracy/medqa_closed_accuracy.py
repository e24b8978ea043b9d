"""Accuracy and parse rate on multiple-choice (letter) and yes/no/maybe items, with medqlora's answer extraction
(prose and markdown read, a capital that starts a word not taken for an option). Load by path, offline:
evaluate.load("<medqlora>/metrics/medqa_closed_accuracy"); pass options=[{"A": ..., "B": ...} or None per item]."""
import datasets
import evaluate

from medqlora.evaluation.scoring import closed_answer


class MedqaClosedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=(
                "predictions: generated answers; references: the correct letter or yes/no/maybe; options: per item a "
                "dict of letter -> option text (multiple choice) or None (yes/no/maybe)"),
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, options=None, prompt_opened_think=False):
        options = options or [None] * len(predictions)
        parsed = [closed_answer({"kind": "choice" if o else "yesno", "options": o}, p, prompt_opened_think)
                  for p, o in zip(predictions, options)]
        n = max(len(parsed), 1)
        return {"accuracy": sum(p == r for p, r in zip(parsed, references)) / n,
                "parse_rate": sum(p is not None for p in parsed) / n}
