from .baselines import RunningMeanBaseline
from .batch import DiscriTuneBatch
from .collator import DiscriTuneCollator
from .discritune_config import DiscriTuneConfig
from .discritune_trainer import DiscriTuneTrainer
from .embedding_cache import cache_frozen_embeddings


__all__ = [
    "DiscriTuneBatch",
    "DiscriTuneCollator",
    "DiscriTuneConfig",
    "DiscriTuneTrainer",
    "RunningMeanBaseline",
    "cache_frozen_embeddings",
]
