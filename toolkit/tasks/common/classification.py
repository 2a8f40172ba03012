"""Classification tasks: cross-entropy, accuracy and a confusion matrix over the whole validation set.

A subclass implements :meth:`ClassifierTask.logits` (one forward of the model it is given) and sets
``class_names``; its config has ``num_classes``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.tasks.base import EvalOutput, StepOutput, Task

from .figures import confusion_image


class ClassifierTask(Task):
    """Shared by classification tasks: loss, metrics (``loss``, ``accuracy`` in %), confusion-matrix image."""

    #: names of the classes in label order (reports and the confusion matrix); default: the label numbers
    class_names: tuple[str, ...] = ()

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """(B, num_classes) logits of a batch."""
        raise NotImplementedError

    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        return StepOutput({"loss": F.cross_entropy(self.logits(model, batch).float(), batch["label"])})

    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        logits = self.logits(model, batch).float()
        pred = logits.argmax(1)
        label = batch["label"]
        sums = {"loss_sum": F.cross_entropy(logits, label, reduction="sum").double(),
                "correct": (pred == label).sum().double(), "count": torch.tensor(float(len(label)))}
        k = self.cfg.num_classes
        cm = torch.bincount(label * k + pred, minlength=k * k).double()
        sums.update({f"cm_{i}_{j}": cm[i * k + j] for i in range(k) for j in range(k)})
        return EvalOutput(sums=sums)

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "accuracy": 100.0 * sums.get("correct", 0.0) / n}

    def eval_images(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        k = self.cfg.num_classes
        cm = np.array([[sums.get(f"cm_{i}_{j}", 0.0) for j in range(k)] for i in range(k)])
        names = list(self.class_names) if len(self.class_names) == k else [str(i) for i in range(k)]
        return {"confusion_matrix": confusion_image(cm, names)}
