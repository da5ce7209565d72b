"""DiscriminativeRewardModel: hand-computed rewards, equivariance, frozen judge, global batch, hard negatives."""

import math
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from discritune_trl import DiscriminativeRewardModel, Retriever, RewardOutput
from discritune_trl.rewards import gather_rows, mine_hard_negatives
from discritune_trl.testing.distributed import run_on_processes
from discritune_trl.testing.retrievers import tiny_open_clip_retriever, tiny_transformers_clip_retriever


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_retriever.py"


class LookupRetriever(Retriever):
    """Deterministic toy: captions map to fixed vectors; the "pixels" are the image vectors themselves."""

    def __init__(self, text_vectors: dict[str, list[float]], scale: float = 2.0, embed_dim: int | None = None):
        super().__init__()
        self.text_vectors = text_vectors
        self.scale = scale
        self.embed_dim = embed_dim
        self.freeze()

    def preprocess(self, images):
        raise NotImplementedError("pass pixel_values directly")

    def encode_images(self, pixel_values):
        return F.normalize(pixel_values.float(), dim=-1)

    def encode_texts(self, texts):
        return F.normalize(torch.tensor([self.text_vectors[text] for text in texts], dtype=torch.float), dim=-1)

    @property
    def logit_scale(self):
        return torch.tensor(self.scale)


TOY_IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # two orthogonal images
TOY_TEXTS = {"zero": [1.0, 0.0], "one": [0.6, 0.8], "both": [1.0, 1.0]}


def _random_pixels(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


CAPTIONS = ["a red circle.", "", "two dogs in a park.", "a photo of " + "very " * 100 + "long text", "a cat."]


@pytest.fixture(scope="module")
def retriever():
    return tiny_open_clip_retriever(seed=0)


# ---- the rewards themselves ----------------------------------------------------------------------------------


def test_hand_computed_rewards_for_toy_retriever():
    toy = LookupRetriever(TOY_TEXTS, scale=2.0)
    # logits = 2 * cos: "zero" -> [2, 0]; "one" -> [1.2, 1.6].
    log_prob = DiscriminativeRewardModel(toy)(["zero", "one"], pixel_values=TOY_IMAGES)
    assert isinstance(log_prob, RewardOutput)
    torch.testing.assert_close(log_prob.logits, torch.tensor([[2.0, 0.0], [1.2, 1.6]]))
    expected = torch.tensor([-math.log(1 + math.exp(-2.0)), -math.log(1 + math.exp(-0.4))])
    torch.testing.assert_close(log_prob.rewards, expected)
    assert log_prob.accuracy.tolist() == [1.0, 1.0]
    assert log_prob.target_indices.tolist() == [0, 1]

    swapped = DiscriminativeRewardModel(toy, reward_type="accuracy")(["one", "zero"], pixel_values=TOY_IMAGES)
    assert swapped.rewards.tolist() == [0.0, 0.0]  # "one" is closer to image 1, "zero" to image 0

    cosine = DiscriminativeRewardModel(toy, reward_type="cosine")(["zero", "one"], pixel_values=TOY_IMAGES)
    torch.testing.assert_close(cosine.rewards, torch.tensor([1.0, 0.8]))


def test_a_tie_is_not_a_correct_retrieval():
    toy = LookupRetriever(TOY_TEXTS)
    output = DiscriminativeRewardModel(toy, reward_type="accuracy")(["both", "both"], pixel_values=TOY_IMAGES)
    assert output.rewards.tolist() == [0.0, 0.0]
    torch.testing.assert_close(output.accuracy, output.rewards)


def test_several_captions_per_image_repeat_the_targets():
    toy = LookupRetriever(TOY_TEXTS)
    reward_model = DiscriminativeRewardModel(toy)
    grouped = reward_model(["zero", "one", "one", "zero"], pixel_values=TOY_IMAGES)  # G = 2
    assert grouped.target_indices.tolist() == [0, 0, 1, 1]
    explicit = reward_model(
        ["zero", "one", "one", "zero"], pixel_values=TOY_IMAGES, target_indices=torch.tensor([0, 0, 1, 1])
    )
    torch.testing.assert_close(grouped.rewards, explicit.rewards)
    one_each = reward_model(["zero", "one"], pixel_values=TOY_IMAGES).rewards
    torch.testing.assert_close(grouped.rewards[[0, 2]], one_each)  # "zero"->image 0, "one"->image 1


def test_permuting_the_batch_permutes_the_rewards(retriever):
    reward_model = DiscriminativeRewardModel(retriever)
    pixel_values = _random_pixels(len(CAPTIONS))
    output = reward_model(CAPTIONS, pixel_values=pixel_values)
    permutation = torch.tensor([3, 0, 4, 1, 2])
    permuted = reward_model([CAPTIONS[i] for i in permutation], pixel_values=pixel_values[permutation])
    torch.testing.assert_close(permuted.rewards, output.rewards[permutation])
    torch.testing.assert_close(permuted.accuracy, output.accuracy[permutation])
    # The distribution over candidates sums to one for every caption.
    torch.testing.assert_close(output.logits.softmax(-1).sum(-1), torch.ones(len(CAPTIONS)))


def test_cached_image_embeds_give_the_same_rewards(retriever):
    reward_model = DiscriminativeRewardModel(retriever, reward_type="cosine")
    pixel_values = _random_pixels(len(CAPTIONS))
    image_embeds = reward_model.encode_images(pixel_values)
    from_pixels = reward_model(CAPTIONS, pixel_values=pixel_values)
    from_cache = reward_model(CAPTIONS, image_embeds=image_embeds)
    assert torch.equal(from_pixels.rewards, from_cache.rewards)
    # Cosine reward: caption vs its own image only.
    expected = (retriever.encode_texts(CAPTIONS) * image_embeds).sum(-1)
    torch.testing.assert_close(from_cache.rewards, expected)


def test_compute_rewards_is_the_one_method_to_override():
    class ProbabilityReward(DiscriminativeRewardModel):
        def compute_rewards(self, logits, target_indices):
            return logits.softmax(-1).gather(1, target_indices[:, None]).squeeze(1)

    toy = LookupRetriever(TOY_TEXTS)
    output = ProbabilityReward(toy, reward_type="probability")(["zero", "one"], pixel_values=TOY_IMAGES)
    torch.testing.assert_close(output.rewards, torch.tensor([1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-0.4))]))


def test_retriever_is_untouched_by_a_training_step(retriever):
    """A REINFORCE step through a model holding the reward model leaves every retriever parameter bit-identical."""
    reward_model = DiscriminativeRewardModel(retriever)
    words = ["a red circle.", "a dog.", "a cat.", "the sea."]
    policy = nn.Linear(8, len(words))
    model = nn.ModuleDict({"policy": policy, "reward_model": reward_model})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    before = {name: value.clone() for name, value in retriever.state_dict().items()}
    policy_before = policy.weight.detach().clone()

    features = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    log_probs = policy(features).log_softmax(-1)  # [B, V]
    actions = log_probs.argmax(-1)
    output = reward_model([words[i] for i in actions], pixel_values=_random_pixels(4))
    assert not output.rewards.requires_grad
    loss = -((output.rewards - output.rewards.mean()) * log_probs.gather(1, actions[:, None]).squeeze(1)).mean()
    loss.backward()
    optimizer.step()

    assert all(parameter.grad is None for parameter in retriever.parameters())
    assert all(torch.equal(before[name], value) for name, value in retriever.state_dict().items())
    assert not any(module.training for module in retriever.modules())
    assert not torch.equal(policy.weight, policy_before)


def test_custom_retriever_example_runs_end_to_end(capsys):
    namespace = runpy.run_path(str(EXAMPLE))
    results = namespace["main"]()
    printed = capsys.readouterr().out
    assert "right colours" in printed and "rewards" in printed
    # Naming the right colour is rewarded more than naming a wrong one or none.
    assert (results["right colours"] > results["no colours"]).all()
    assert (results["no colours"] > results["wrong colours"]).all()


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_transformers_retriever_as_reward(model_type):
    judge = tiny_transformers_clip_retriever(model_type=model_type)
    reward_model = DiscriminativeRewardModel(judge)
    output = reward_model(CAPTIONS, pixel_values=_random_pixels(len(CAPTIONS)))
    assert output.rewards.shape == (5,) and torch.isfinite(output.rewards).all()
    assert (output.rewards <= 0).all()


# ---- several retrievers -------------------------------------------------------------------------------------


def test_several_retrievers_mean_and_alternate():
    first, second = LookupRetriever(TOY_TEXTS, scale=2.0), LookupRetriever(TOY_TEXTS, scale=5.0)
    captions = ["zero", "one"]
    single = [DiscriminativeRewardModel(r)(captions, pixel_values=TOY_IMAGES).rewards for r in (first, second)]

    mean = DiscriminativeRewardModel([first, second])
    torch.testing.assert_close(
        mean(captions, pixel_values=[TOY_IMAGES, TOY_IMAGES]).rewards, (single[0] + single[1]) / 2
    )

    alternate = DiscriminativeRewardModel([first, second], multi_retriever="alternate")
    by_call = [alternate(captions, image_embeds=[TOY_IMAGES, TOY_IMAGES]).rewards for _ in range(3)]
    torch.testing.assert_close(by_call[0], single[0])
    torch.testing.assert_close(by_call[1], single[1])
    torch.testing.assert_close(by_call[2], single[0])
    by_step = alternate(captions, image_embeds=[TOY_IMAGES, TOY_IMAGES], step=7).rewards
    torch.testing.assert_close(by_step, single[1])

    with pytest.raises(ValueError, match="one tensor per retriever"):
        mean(captions, pixel_values=TOY_IMAGES)


def test_a_failed_call_does_not_advance_the_alternate_rotation():
    first, second = LookupRetriever(TOY_TEXTS, scale=2.0), LookupRetriever(TOY_TEXTS, scale=5.0)
    captions = ["zero", "one"]
    single = [DiscriminativeRewardModel(r)(captions, pixel_values=TOY_IMAGES).rewards for r in (first, second)]
    alternate = DiscriminativeRewardModel([first, second], multi_retriever="alternate")
    broken = torch.full_like(TOY_IMAGES, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        alternate(captions, image_embeds=[broken, broken])  # would have been the first retriever's call
    torch.testing.assert_close(alternate(captions, image_embeds=[TOY_IMAGES, TOY_IMAGES]).rewards, single[0])
    torch.testing.assert_close(alternate(captions, image_embeds=[TOY_IMAGES, TOY_IMAGES]).rewards, single[1])


def test_several_retrievers_cache_one_embedding_per_retriever(retriever):
    other = tiny_open_clip_retriever(seed=1, embed_dim=8)
    reward_model = DiscriminativeRewardModel([retriever, other])
    pixel_values = _random_pixels(3)  # both tiny retrievers read 32x32 pixels
    embeds = reward_model.encode_images([pixel_values, pixel_values])
    assert [tuple(e.shape) for e in embeds] == [(3, 16), (3, 8)]
    output = reward_model(CAPTIONS[:3], image_embeds=embeds)
    assert output.rewards.shape == (3,)


# ---- hard negatives -----------------------------------------------------------------------------------------


def test_mined_hard_negatives_never_include_the_target():
    generator = torch.Generator().manual_seed(0)
    others = F.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    targets = others[:4]  # the targets are bank rows themselves
    indices, valid = mine_hard_negatives(targets, others, num_negatives=5, similarity_ceiling=None)
    assert valid.all()
    for row in range(4):
        assert row not in indices[row].tolist()
        # ...and the rest are the most similar rows, in order.
        similarities = others @ targets[row]
        similarities[row] = -2
        assert indices[row].tolist() == similarities.topk(5).indices.tolist()

    # A target whose bank copy differs slightly (another crop, fp16) is excluded by its explicit index.
    noisy_bank = F.normalize(others + 0.02 * torch.randn(30, 8, generator=generator), dim=-1)
    without_index, _ = mine_hard_negatives(targets, noisy_bank, 1, similarity_ceiling=None)
    assert without_index[:, 0].tolist() == [0, 1, 2, 3]  # the near-copy would be picked...
    with_index, _ = mine_hard_negatives(targets, noisy_bank, 1, None, exclude_indices=torch.arange(4))
    assert all(with_index[row, 0] != row for row in range(4))  # ...unless its row is named


def test_similarity_ceiling_skips_near_duplicates():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.8], [0.0, 1.0]]), dim=-1)
    target = torch.tensor([[1.0, 0.0]])
    indices, valid = mine_hard_negatives(target, bank, num_negatives=3, similarity_ceiling=0.8)
    # Row 0 is the target, row 1 (cos 0.995) a near-duplicate: only rows 2 (cos 0.78) and 3 (cos 0) remain.
    assert indices[0, :2].tolist() == [2, 3] and valid[0].tolist() == [True, True, False]


def test_reward_model_appends_each_targets_hard_negatives(retriever):
    bank_pixels = _random_pixels(12, seed=1)
    pixel_values = bank_pixels[:3]  # the batch images are in the bank too
    bank = retriever.encode_images(bank_pixels)
    reward_model = DiscriminativeRewardModel(
        retriever, num_hard_negatives=4, hard_negative_bank=bank, similarity_ceiling=None
    )
    captions = ["a", "b", "c", "d", "e", "f"]  # two per image
    output = reward_model(captions, pixel_values=pixel_values, target_bank_indices=torch.arange(3))
    assert output.logits.shape == (6, 3 + 4)

    image_embeds = retriever.encode_images(pixel_values)
    neighbours, _ = mine_hard_negatives(image_embeds, bank, 4, None, exclude_indices=torch.arange(3))
    text_embeds = retriever.encode_texts(captions)
    targets = torch.arange(3).repeat_interleave(2)
    expected = retriever.logit_scale * torch.einsum("bd,bkd->bk", text_embeds, bank[neighbours[targets]])
    torch.testing.assert_close(output.logits[:, 3:], expected)
    for row, target in enumerate(targets.tolist()):
        assert target not in neighbours[target].tolist()
        assert output.logits[row, 3:].ne(output.logits[row, target]).all()

    # With hard negatives a single image is enough: the bank provides the distractors.
    single = reward_model(["a"], pixel_values=pixel_values[:1])
    assert single.logits.shape == (1, 1 + 4) and torch.isfinite(single.rewards).all()


# ---- bad input ----------------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(retriever):
    reward_model = DiscriminativeRewardModel(retriever)
    pixel_values = _random_pixels(2)
    with pytest.raises(ValueError, match="3 captions for 2 images"):
        reward_model(["a", "b", "c"], pixel_values=pixel_values)
    with pytest.raises(ValueError, match="no distractor.*num_hard_negatives"):
        reward_model(["a"], pixel_values=pixel_values[:1])
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        reward_model(["a", "b"])
    with pytest.raises(TypeError, match="list of strings"):
        reward_model("a caption", pixel_values=pixel_values)
    with pytest.raises(ValueError, match="image_embeds contains NaN"):
        reward_model(["a", "b"], image_embeds=torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match="reward_type='clip_score' is not one of"):
        DiscriminativeRewardModel(retriever, reward_type="clip_score")
    with pytest.raises(ValueError, match="embedding size 8 but OpenCLIPRetriever embeds images in 16"):
        DiscriminativeRewardModel(retriever, num_hard_negatives=2, hard_negative_bank=torch.randn(10, 8))
    with pytest.raises(ValueError, match="needs hard_negative_bank"):
        DiscriminativeRewardModel(retriever, num_hard_negatives=2)


def test_bank_size_mismatch_is_caught_at_the_first_call_without_embed_dim():
    toy = LookupRetriever(TOY_TEXTS)  # embed_dim unknown until it embeds something
    reward_model = DiscriminativeRewardModel(toy, num_hard_negatives=1, hard_negative_bank=torch.randn(5, 3))
    with pytest.raises(ValueError, match="bank has embedding size 3 but the images have 2"):
        reward_model(["zero", "one"], pixel_values=TOY_IMAGES)


def test_nan_embeddings_from_a_custom_retriever_are_reported():
    broken = LookupRetriever({"ok": [1.0, 0.0], "bad": [0.0, 0.0]})  # normalising a zero vector gives 0, then NaN:
    broken.encode_texts = lambda texts: torch.tensor(
        [[float("nan"), 0.0] if t == "bad" else [1.0, 0.0] for t in texts]
    )
    with pytest.raises(ValueError, match=r"LookupRetriever.encode_texts output contains NaN or inf \(rows \[1\]\)"):
        DiscriminativeRewardModel(broken)(["ok", "bad"], pixel_values=TOY_IMAGES)


def test_empty_and_overlong_captions_score(retriever):
    output = DiscriminativeRewardModel(retriever)(["", "word " * 200], pixel_values=_random_pixels(2))
    assert torch.isfinite(output.rewards).all() and (output.rewards <= 0).all()


# ---- several processes --------------------------------------------------------------------------------------


def test_gather_rows_is_identity_in_one_process():
    rows = torch.randn(3, 4)
    gathered, offset = gather_rows(rows)
    assert gathered is rows and offset == 0


SPLIT = (3, 2)  # images on rank 0 and rank 1: unequal on purpose


def _two_process_rewards(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    retriever = tiny_open_clip_retriever(seed=0)
    pixel_values = _random_pixels(sum(SPLIT))
    start = sum(SPLIT[:rank])
    local = slice(start, start + SPLIT[rank])
    captions = [f"caption {i} {j}" for i in range(sum(SPLIT)) for j in range(2)][2 * local.start : 2 * local.stop]
    bank = retriever.encode_images(_random_pixels(10, seed=1))
    results = {}
    for name, kwargs in {"plain": {}, "hard": {"num_hard_negatives": 2, "hard_negative_bank": bank}}.items():
        output = DiscriminativeRewardModel(retriever, **kwargs)(captions, pixel_values=pixel_values[local])
        results[name] = output.rewards
        results[f"{name}_targets"] = output.target_indices
        results[f"{name}_logits"] = output.logits
    return results


@pytest.mark.distributed
def test_two_processes_reward_like_one_process_over_the_global_batch():
    per_rank = run_on_processes(_two_process_rewards, world_size=2)
    retriever = tiny_open_clip_retriever(seed=0)
    captions = [f"caption {i} {j}" for i in range(sum(SPLIT)) for j in range(2)]
    pixel_values = _random_pixels(sum(SPLIT))
    bank = retriever.encode_images(_random_pixels(10, seed=1))
    for name, kwargs in {"plain": {}, "hard": {"num_hard_negatives": 2, "hard_negative_bank": bank}}.items():
        single = DiscriminativeRewardModel(retriever, **kwargs)(captions, pixel_values=pixel_values)
        torch.testing.assert_close(torch.cat([r[name] for r in per_rank]), single.rewards)
        torch.testing.assert_close(torch.cat([r[f"{name}_logits"] for r in per_rank]), single.logits)
        assert torch.cat([r[f"{name}_targets"] for r in per_rank]).tolist() == single.target_indices.tolist()
    assert per_rank[1]["plain_targets"].tolist() == [3, 3, 4, 4]  # offset by rank 0's three images


def test_half_precision_retriever_gives_float32_rewards():
    retriever = tiny_open_clip_retriever(seed=0)
    pixel_values = _random_pixels(3)
    full = DiscriminativeRewardModel(retriever)(CAPTIONS[:3], pixel_values=pixel_values)
    retriever.to(torch.bfloat16)  # float32 pixels are cast to the retriever's dtype
    half = DiscriminativeRewardModel(retriever)(CAPTIONS[:3], pixel_values=pixel_values)
    assert half.rewards.dtype == half.logits.dtype == torch.float32
    torch.testing.assert_close(half.rewards, full.rewards, atol=0.05, rtol=0.05)
