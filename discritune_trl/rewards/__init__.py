"""Discriminative rewards: how well a frozen retriever finds the captioned image among the candidates."""

from .distributed import gather_objects, gather_rows
from .hard_negatives import mine_hard_negatives
from .reward_model import REWARD_TYPES, DiscriminativeRewardModel, RewardOutput, retrieval_accuracy


__all__ = [
    "REWARD_TYPES",
    "DiscriminativeRewardModel",
    "RewardOutput",
    "gather_objects",
    "gather_rows",
    "mine_hard_negatives",
    "retrieval_accuracy",
]
