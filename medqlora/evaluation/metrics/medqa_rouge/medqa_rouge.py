"""ROUGE-1/2/L (F1, stemmed) as the medqlora evaluate stage scores free-text answers: the answer after any
</think> is compared with the reference. Load by path, offline: evaluate.load("<medqlora>/metrics/medqa_rouge")."""
import datasets
import evaluate

from medqlora.evaluation.scoring import answer_part, rouge_scores


class MedqaRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Lin, C.-Y. (2004). ROUGE. ACL workshop.", inputs_description=(
                "predictions: generated answers; references: reference answers; prompt_opened_think: the prompt "
                "opened a <think> block (DeepSeek-R1 templates)"),
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, prompt_opened_think=False):
        return rouge_scores([answer_part(p, prompt_opened_think) for p in predictions], references)
