"""Discriminative rewards: how well a frozen retriever finds the captioned image among the candidates."""

from .builder import (
    build_reward_model,
    check_reward_model_matches,
    describe_reward_model,
    encode_hard_negative_bank,
    user_set_reward_settings,
)
from .distributed import gather_objects, gather_rows
from .hard_negatives import mine_hard_negatives
from .reward_model import REWARD_TYPES, DiscriminativeRewardModel, RewardOutput, retrieval_accuracy


__all__ = [
    "REWARD_TYPES",
    "DiscriminativeRewardModel",
    "RewardOutput",
    "build_reward_model",
    "check_reward_model_matches",
    "describe_reward_model",
    "encode_hard_negative_bank",
    "gather_objects",
    "gather_rows",
    "mine_hard_negatives",
    "retrieval_accuracy",
    "user_set_reward_settings",
]
