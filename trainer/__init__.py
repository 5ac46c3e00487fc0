"""Fine-tuning FG-CLIP (installed as ``fgsearch.trainer``): FineHARD/JSONL data, FineShapes, losses, loop."""

from fgsearch.trainer.fineshapes import make_fineshapes
from fgsearch.trainer.loop import TrainConfig, train

__all__ = ["TrainConfig", "make_fineshapes", "train"]
