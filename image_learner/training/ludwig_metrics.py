"""Per-epoch metrics Ludwig 0.17.10 lacks, registered through Ludwig's own metric registry (as timm_backbone
registers the encoder), so that ``--validation-metric`` can pick the kept epoch by them.

Ludwig tracks for a category output accuracy (macro recall = balanced accuracy), accuracy_micro (plain
accuracy), roc_auc, hits_at_k and the loss; for a binary output accuracy, precision, recall, specificity,
roc_auc and the loss (ludwig/modules/metric_modules.py). Added here:

- ``macro_f1`` (category and binary): unweighted mean of the per-class F1 scores (torchmetrics; a class with
  no true, predicted or missed row in the split is left out of the mean, as in metrics.py's macro averages).
- ``balanced_accuracy`` (binary): mean of sensitivity and specificity.

The binary ones, like Ludwig's binary accuracy, use Ludwig's predictions, i.e. P(positive) >= 0.5: the
decision threshold is tuned only after training (metrics.choose_threshold).
"""

from __future__ import annotations

MACRO_F1 = "macro_f1"
BALANCED_ACCURACY = "balanced_accuracy"


def register_with_ludwig() -> None:
    """Register the metrics (idempotent); call before a Ludwig config naming them is validated or trained."""
    import torch
    from ludwig.constants import BINARY, CATEGORY, MAXIMIZE, PREDICTIONS
    from ludwig.modules.metric_modules import LudwigMetric
    from ludwig.modules.metric_registry import get_metric_classes, register_metric
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    if MACRO_F1 in get_metric_classes(CATEGORY):
        return

    def _class_index(target: torch.Tensor) -> torch.Tensor:
        return (target.argmax(dim=1) if target.dim() > 1 else target).long()

    @register_metric(MACRO_F1, [CATEGORY], MAXIMIZE, PREDICTIONS)
    class CategoryMacroF1(MulticlassF1Score, LudwigMetric):
        def __init__(self, num_classes: int, **kwargs):
            super().__init__(num_classes=num_classes, average="macro")

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds.long(), _class_index(target))

    # Binary predictions are booleans (P >= 0.5): two classes, 0 = negative, 1 = positive.
    @register_metric(MACRO_F1, [BINARY], MAXIMIZE, PREDICTIONS)
    class BinaryMacroF1(MulticlassF1Score, LudwigMetric):
        def __init__(self, **kwargs):
            super().__init__(num_classes=2, average="macro")

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds.long(), target.long())

    @register_metric(BALANCED_ACCURACY, [BINARY], MAXIMIZE, PREDICTIONS)
    class BinaryBalancedAccuracy(MulticlassAccuracy, LudwigMetric):
        """Macro recall over the two classes = (sensitivity + specificity) / 2."""

        def __init__(self, **kwargs):
            super().__init__(num_classes=2, average="macro")

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            super().update(preds.long(), target.long())
