"""Knowledge distillation from the dense parent as a training hook (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.errors import LatpruneError
from latprune.train.loop import TrainHook


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    task_loss: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``(1 − α)·task + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``, the KL averaged over the batch.

    The T² factor keeps the soft term's gradient on the same scale as the task loss's whatever T is,
    so α alone sets the balance.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)  # (N, classes)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (N, classes)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * task_loss + alpha * temperature**2 * kl


class DistillHook(TrainHook):
    """Mix the task loss with a soft-target loss from a frozen teacher (the dense parent of a pruned model).

    The teacher runs in eval mode without gradients, so its BatchNorm statistics and weights never move,
    and it holds no state worth checkpointing: the parent checkpoint rebuilds it exactly on resume.
    Put this hook first: it mixes whatever loss it receives, which should be the task loss alone.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5) -> None:
        if temperature <= 0:
            raise LatpruneError(f"The distillation temperature {temperature} is not positive; use e.g. 4.")
        if not 0.0 <= alpha <= 1.0:
            raise LatpruneError(f"The distillation weight alpha={alpha} is outside [0, 1]; use e.g. 0.5.")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def loss(
        self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        self.teacher.eval()  # a caller's .train() on a parent module must not flip the teacher's BatchNorm
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_loss(logits, teacher_logits, loss, self.temperature, self.alpha)


__all__ = ["DistillHook", "distillation_loss"]
