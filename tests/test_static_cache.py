"""Decoding with a static KV cache (`static_cache_decoding`, compiled by `generate` on CUDA) gives the same captions."""

import pytest
import torch
from test_trainer import first_batch, make_trainer

from discritune_trl.testing.clipcap import tiny_clipcap_policy


@pytest.mark.parametrize(
    "generation",
    [dict(), dict(num_beams=3), dict(do_sample=True, top_k=5, num_return_sequences=2)],
    ids=["greedy", "beam", "sample"],
)
def test_static_cache_gives_the_same_captions(generation):
    policy = tiny_clipcap_policy(seed=0)
    image_embeds = torch.randn(5, policy.config.clip_embed_dim, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    expected = policy.generate_captions(image_embeds=image_embeds, max_new_tokens=10, **generation)
    torch.manual_seed(0)
    captions = policy.generate_captions(image_embeds=image_embeds, max_new_tokens=10, static_cache=True, **generation)
    assert captions.texts == expected.texts
    assert torch.equal(captions.sequences, expected.sequences)
    assert torch.equal(captions.caption_mask, expected.caption_mask)


def test_trainer_step_with_a_static_cache_gives_the_same_loss(tmp_path):
    def loss(setting: str):
        trainer = make_trainer(
            tmp_path / setting, static_cache_decoding=setting, logprobs_from_generation="false", max_steps=1
        )
        assert trainer._static_cache == (setting == "true")
        return trainer.compute_loss(trainer.model, first_batch(trainer)).detach()

    torch.testing.assert_close(loss("true"), loss("false"), rtol=0, atol=0)


def test_static_cache_for_a_policy_without_it_fails_at_construction(tmp_path):
    from test_trainer import image_dataset, make_config

    from discritune_trl import BlipPolicy, DiscriminativeRewardModel, DiscriTuneTrainer
    from discritune_trl.testing.blip import tiny_blip
    from discritune_trl.testing.retrievers import tiny_open_clip_retriever

    def trainer(setting: str):
        return DiscriTuneTrainer(
            model=BlipPolicy.from_blip(*tiny_blip(seed=0)),
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=make_config(tmp_path / setting, static_cache_decoding=setting, cache_embeddings=False),
            train_dataset=image_dataset(8),
        )

    with pytest.raises(ValueError, match="supports_static_cache=False"):
        trainer("true")
    assert not trainer("auto")._static_cache


@pytest.mark.slow
def test_compiled_static_cache_decoding_gives_the_same_captions_on_cpu():
    """What `generate` does on CUDA with a static cache (torch.compile of the forward), forced on CPU."""
    from transformers import CompileConfig

    policy = tiny_clipcap_policy(seed=0)
    image_embeds = torch.randn(4, policy.config.clip_embed_dim, generator=torch.Generator().manual_seed(0))
    expected = policy.generate_captions(image_embeds=image_embeds, max_new_tokens=6)
    compile_config = CompileConfig(fullgraph=False, dynamic=False)
    compile_config._compile_all_devices = True
    policy.language_model.generation_config.compile_config = compile_config
    captions = policy.generate_captions(image_embeds=image_embeds, max_new_tokens=6, static_cache=True)
    assert captions.texts == expected.texts
