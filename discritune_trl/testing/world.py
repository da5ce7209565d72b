"""A tiny embedded world (48 training images, 1-layer models, 3 training steps each) that builds in seconds."""

from __future__ import annotations

from ..world import CaptionerTrainingConfig, RetrieverTrainingConfig, WorldConfig, WorldDataConfig


def tiny_world_config(seed: int = 0) -> WorldConfig:
    """A `WorldConfig` small enough for tests: its numbers mean nothing, its files have the real layout."""
    return WorldConfig(
        data=WorldDataConfig(
            seed=seed, num_train=48, num_in_domain_test=12, num_shifted_test=12, captions_per_image=2
        ),
        retriever=RetrieverTrainingConfig(
            model_cfg={
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
                "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
            },
            steps=3,
            batch_size=16,
            warmup_steps=1,
            seed=seed,
        ),
        captioner=CaptionerTrainingConfig(
            gpt2_config={"n_embd": 16, "n_layer": 1, "n_head": 2}, steps=3, batch_size=16, warmup_steps=1, seed=seed
        ),
    )
