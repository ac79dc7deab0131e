"""The tests' handle on full-vocabulary logits (``nemo_resrl.models.full_logits``)."""

from nemo_resrl.models.full_logits import gather_logits

__all__ = ["gather_logits"]
