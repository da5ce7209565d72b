"""`CaptioningPolicy`: what it declares for the trainer, the plumbing written once, the captioner author's helpers,
registration by `model_type`, tied weights, and the chunked token log-probs."""

import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel

from discritune_trl import ClipCapConfig, ClipCapPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.models import (
    POLICY_MAPPING,
    CaptioningPolicy,
    captions_from_generated,
    full_stop_token_ids,
    gather_token_log_probs,
    load_policy,
    register_policy,
    truncate_at_stop,
)
from discritune_trl.testing.clipcap import tiny_clipcap_config, tiny_clipcap_policy, tiny_clipcap_tokenizer
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def reference_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The formula the chunked pass replaces: a full `[B, T, V]` fp32 copy."""
    logits = logits.float()
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


# ---------------------------------------------------------------------- token log-probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_log_probs_equal_the_full_fp32_formula_values_and_gradients(dtype):
    torch.manual_seed(0)
    base = torch.randn(13, 9, 301) * 4
    ids = torch.randint(0, 301, (13, 8))
    weights = torch.randn(13, 8)
    chunked = base.to(dtype).requires_grad_()
    full = base.to(dtype).requires_grad_()
    # A shifted, non-contiguous view, as the transformers captioners pass it.
    new = gather_token_log_probs(chunked[:, :-1], ids, chunk_rows=3)
    old = reference_log_probs(full[:, :-1], ids)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    (new * weights).sum().backward()
    (old * weights).sum().backward()
    torch.testing.assert_close(chunked.grad, full.grad, rtol=0, atol=0)


def test_chunked_log_probs_keep_no_full_vocabulary_fp32_copy_for_backward():
    logits = torch.randn(6, 5, 200, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, 200, (6, 5))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        gather_token_log_probs(logits, ids, chunk_rows=2).sum().backward()
    fp32_sizes = [t.numel() for t in saved if t.dtype == torch.float32]
    assert max(fp32_sizes, default=0) <= 6 * 5  # the [B, T] log-sum-exps, never [B, T, V]


# ---------------------------------------------------------------------- helpers for captioner authors


def test_decoding_helpers_work_with_a_word_list_and_a_decode_function():
    words = ["<eos>", ".", "a", "red", "dot.", "square"]
    assert full_stop_token_ids(words, extra_ids=[0]) == [0, 1, 4]
    assert full_stop_token_ids(range(len(words)), decode=lambda ids: words[ids[0]]) == [1, 4]
    generated = torch.tensor([[2, 3, 5, 1, 3], [2, 4, 3, 3, 3], [2, 3, 3, 3, 3]])
    sequences, mask, stopped = truncate_at_stop(generated, [0, 1, 4], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert stopped.tolist() == [True, True, False]
    out = captions_from_generated(generated, [0, 1, 4], 0, decode=lambda ids: " ".join(words[i] for i in ids))
    assert out.texts == ["a red square .", "a dot.", "a red red red red"]
    assert torch.equal(out.sequences, sequences)


def test_captions_from_generated_still_reads_a_tokenizer():
    tokenizer = tiny_clipcap_tokenizer()
    ids = tokenizer("a red circle . blue", add_special_tokens=False)["input_ids"]
    out = captions_from_generated(
        torch.tensor([ids]), full_stop_token_ids(tokenizer), tokenizer.pad_token_id, tokenizer
    )
    assert out.texts == ["a red circle."]


# ---------------------------------------------------------------------- a minimal policy of one's own


class TinyConfig(PreTrainedConfig):
    model_type = "test_tiny_policy"
    vocab_size: int = 11
    hidden_size: int = 8
    tie_word_embeddings: bool = True


class TinyPolicy(CaptioningPolicy, PreTrainedModel):
    """Embedding + output layer sharing one tensor, declared tied as transformers needs it."""

    config_class = TinyConfig
    supports_beam_search = False
    _tied_weights_keys = {"head.weight": "embed.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mapper = nn.Linear(3, config.hidden_size)
        self.post_init()

    def image_conditioning(self, pixel_values, image_embeds):
        return self.mapper(pixel_values if image_embeds is None else image_embeds)  # [B, E]

    def caption_logits(self, conditioning, caption_ids, caption_mask):
        return self.head(self.embed(caption_ids) + conditioning[:, None])  # [N, T, V]


class ForgetfulTiedPolicy(TinyPolicy):
    """Ties its output layer by hand and forgets to declare it."""

    _tied_weights_keys = None

    def __init__(self, config):
        super().__init__(config)
        self.head.weight = self.embed.weight


def test_declared_tied_weights_round_trip_and_undeclared_ones_fail_at_save_naming_them(tmp_path):
    policy = TinyPolicy(TinyConfig())
    assert policy.head.weight is policy.embed.weight
    policy.save_pretrained(tmp_path / "ok")
    loaded = TinyPolicy.from_pretrained(tmp_path / "ok")
    assert loaded.head.weight is loaded.embed.weight and torch.equal(loaded.head.weight, policy.head.weight)

    forgetful = ForgetfulTiedPolicy(TinyConfig())
    with pytest.raises(ValueError, match=r"\['embed.weight', 'head.weight'\].*_tied_weights_keys"):
        forgetful.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="not declared tied"):  # before training, not after it
        DiscriTuneTrainer(
            model=forgetful,
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=DiscriTuneConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"),
        )


def test_shared_log_prob_pass_and_forward_routing():
    torch.manual_seed(0)
    policy = TinyPolicy(TinyConfig())
    pixels = torch.randn(2, 3)
    ids = torch.randint(0, 11, (4, 5))  # two captions per image
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    expected = reference_log_probs(
        policy.head(policy.embed(ids) + policy.mapper(pixels).repeat_interleave(2, 0)[:, None]), ids
    )
    expected = (expected * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(policy(pixels, caption_ids=ids, caption_mask=mask), expected)
    with pytest.raises(ValueError, match="caption_mask"):
        policy(pixels, caption_ids=ids)
    with pytest.raises(NotImplementedError, match="needs caption_ids"):
        policy(pixels)


def test_a_registered_policy_loads_by_model_type_and_an_unknown_one_names_the_fix(tmp_path):
    policy = TinyPolicy(TinyConfig())
    policy.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='test_tiny_policy'.*register_policy"):
        load_policy(str(tmp_path))
    register_policy(TinyConfig, TinyPolicy)
    try:
        loaded = load_policy(str(tmp_path))
        assert type(loaded) is TinyPolicy
        assert torch.equal(loaded.mapper.weight, policy.mapper.weight)
        from_auto = AutoModel.from_pretrained(tmp_path)  # registered with transformers' AutoModel too
        assert type(from_auto) is TinyPolicy and torch.equal(from_auto.mapper.weight, policy.mapper.weight)
        with pytest.raises(ValueError, match="already registered to TinyPolicy"):
            register_policy(TinyConfig, _OtherTiny)
    finally:
        POLICY_MAPPING.pop(TinyConfig.model_type)
    with pytest.raises(TypeError, match="config_class"):
        register_policy(ClipCapConfig, TinyPolicy)
    assert POLICY_MAPPING["clipcap"] is ClipCapPolicy


class _OtherTiny(TinyPolicy):
    pass


def test_captioning_policy_must_come_before_the_model_base():
    with pytest.raises(TypeError, match=r"class Wrong\(CaptioningPolicy, PreTrainedModel\)"):

        class Wrong(PreTrainedModel, CaptioningPolicy):
            config_class = TinyConfig


def test_clipcap_config_refuses_the_removed_log_prob_reduction():
    config = tiny_clipcap_config()
    assert not hasattr(config, "log_prob_reduction")
    ClipCapConfig(**{**config.to_dict(), "log_prob_reduction": "mean"})  # what older config.json files hold
    with pytest.raises(ValueError, match="log_prob_reduction='sum'.*reduction="):
        ClipCapConfig(**{**config.to_dict(), "log_prob_reduction": "sum"})


def test_generation_mode_restores_each_submodule_mode():
    policy = tiny_clipcap_policy(seed=0).train()
    policy.language_model.transformer.h[0].eval()  # e.g. a part kept in eval mode on purpose
    before = {name: module.training for name, module in policy.named_modules()}
    with policy.generation_mode():
        assert not any(module.training for module in policy.modules()) and not torch.is_grad_enabled()
    assert {name: module.training for name, module in policy.named_modules()} == before


# ---------------------------------------------------------------------- what the trainer reads


class GreedyOnlyClipCap(ClipCapPolicy):
    supports_beam_search = False

    def generate_captions(self, *args, num_beams=1, **kwargs):
        if num_beams > 1:
            raise ValueError("this captioner has no beam search")
        return super().generate_captions(*args, num_beams=num_beams, **kwargs)


def test_a_greedy_only_policy_is_evaluated_greedily_with_one_warning(tmp_path, caplog):
    tokenizer = tiny_clipcap_tokenizer()
    policy = GreedyOnlyClipCap(tiny_clipcap_config(tokenizer), tokenizer=tokenizer).eval()
    trainer = DiscriTuneTrainer(
        model=policy,
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(
            output_dir=str(tmp_path),
            per_device_eval_batch_size=4,
            max_completion_length=6,
            use_cpu=True,
            report_to="none",
        ),
        eval_dataset=image_dataset(6),
    )
    assert trainer.args.eval_num_beams == 5 and trainer.processing_class is tokenizer
    with caplog.at_level(logging.WARNING):
        metrics = trainer.evaluate()
        trainer.evaluate()
    assert sum("supports_beam_search=False" in record.message for record in caplog.records) == 1
    greedy_texts, _, _ = trainer.caption_dataset(trainer.eval_dataset, num_beams=1)
    assert metrics["eval_caption_mean_words"] == pytest.approx(
        sum(len(text.split()) for text in greedy_texts) / len(greedy_texts)
    )
