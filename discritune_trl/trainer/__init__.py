from .baselines import RunningMeanBaseline
from .collator import DiscriTuneCollator
from .discritune_config import DiscriTuneConfig
from .discritune_trainer import DiscriTuneTrainer


__all__ = ["DiscriTuneCollator", "DiscriTuneConfig", "DiscriTuneTrainer", "RunningMeanBaseline"]
