"""Fine-tuning FG-CLIP (installed as ``fgsearch.trainer``).

``config`` (TrainConfig), ``data`` (FineHARD/JSONL reading and collation), ``fineshapes`` (the
synthetic dataset), ``losses`` (FG-CLIP's three losses), ``loop`` (the training stages),
``checkpoint`` (exact resume) and ``evaluation`` (held-out metrics during training). The trainer
uses the library (``fgsearch``); the library never imports it.
"""

from fgsearch.trainer.fineshapes import make_fineshapes
from fgsearch.trainer.loop import TrainConfig, train

__all__ = ["TrainConfig", "make_fineshapes", "train"]
