"""Original ClipCap `.pt` checkpoints: tiny files in the published layout, converted and checked against a
direct computation on the same weights."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from discritune_trl import ClipCapPolicy
from discritune_trl.testing.clipcap import TINY_OPEN_CLIP_CFG, tiny_clipcap_config, tiny_clipcap_tokenizer


CLIP_DIM, PREFIX = 32, 4
TOKENIZER = tiny_clipcap_tokenizer()
TEXT_CONFIG = tiny_clipcap_config(TOKENIZER).text_config.to_dict()


def original_gpt2_weights(seed: int) -> dict[str, torch.Tensor]:
    """`gpt.*` weights as an old transformers version saved them, causal-mask buffers included."""
    torch.manual_seed(seed)
    config = GPT2Config(**TEXT_CONFIG)
    weights = {f"gpt.{key}": value for key, value in GPT2LMHeadModel(config).state_dict().items()}
    for layer in range(config.n_layer):
        positions = config.n_positions
        weights[f"gpt.transformer.h.{layer}.attn.bias"] = torch.tril(torch.ones(positions, positions))[None, None]
        weights[f"gpt.transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return weights


def original_mlp_checkpoint(seed: int = 0, clip_dim: int = CLIP_DIM) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = PREFIX * TEXT_CONFIG["n_embd"]
    weights = {
        "clip_project.model.0.weight": torch.randn(out // 2, clip_dim, generator=generator) * 0.2,
        "clip_project.model.0.bias": torch.randn(out // 2, generator=generator) * 0.2,
        "clip_project.model.2.weight": torch.randn(out, out // 2, generator=generator) * 0.2,
        "clip_project.model.2.bias": torch.randn(out, generator=generator) * 0.2,
    }
    return weights | original_gpt2_weights(seed)


def original_transformer_checkpoint(seed: int = 0, clip_length: int = 3, layers: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dim = TEXT_CONFIG["n_embd"]

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.2

    weights = {
        "clip_project.linear.weight": rand(clip_length * dim, CLIP_DIM),
        "clip_project.linear.bias": rand(clip_length * dim),
        "clip_project.prefix_const": rand(PREFIX, dim),
    }
    for i in range(layers):
        layer = f"clip_project.transformer.layers.{i}"
        weights |= {
            f"{layer}.norm1.weight": 1 + rand(dim),
            f"{layer}.norm1.bias": rand(dim),
            f"{layer}.attn.to_queries.weight": rand(dim, dim),
            f"{layer}.attn.to_keys_values.weight": rand(2 * dim, dim),
            f"{layer}.attn.project.weight": rand(dim, dim),
            f"{layer}.attn.project.bias": rand(dim),
            f"{layer}.norm2.weight": 1 + rand(dim),
            f"{layer}.norm2.bias": rand(dim),
            f"{layer}.mlp.fc1.weight": rand(2 * dim, dim),
            f"{layer}.mlp.fc1.bias": rand(2 * dim),
            f"{layer}.mlp.fc2.weight": rand(dim, 2 * dim),
            f"{layer}.mlp.fc2.bias": rand(dim),
        }
    return weights | original_gpt2_weights(seed)


def reference_prefix(weights: dict[str, torch.Tensor], image_embeds: torch.Tensor, heads: int) -> torch.Tensor:
    """ClipCap's mapper computed directly from the original tensors, as the published model does."""
    w = weights
    if "clip_project.model.0.weight" in w:
        hidden = torch.tanh(F.linear(image_embeds, w["clip_project.model.0.weight"], w["clip_project.model.0.bias"]))
        return F.linear(hidden, w["clip_project.model.2.weight"], w["clip_project.model.2.bias"]).view(
            len(image_embeds), PREFIX, -1
        )
    dim = w["clip_project.prefix_const"].shape[1]
    x = F.linear(image_embeds, w["clip_project.linear.weight"], w["clip_project.linear.bias"])
    clip_length = x.shape[1] // dim
    x = torch.cat([x.view(len(x), clip_length, dim), w["clip_project.prefix_const"].expand(len(x), -1, -1)], 1)
    layer = 0
    while f"clip_project.transformer.layers.{layer}.norm1.weight" in w:
        p = f"clip_project.transformer.layers.{layer}."
        h = F.layer_norm(x, (dim,), w[p + "norm1.weight"], w[p + "norm1.bias"])
        b, n, _ = h.shape
        q = (h @ w[p + "attn.to_queries.weight"].T).reshape(b, n, heads, dim // heads)
        kv = (h @ w[p + "attn.to_keys_values.weight"].T).reshape(b, n, 2, heads, dim // heads)
        scores = torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * (dim // heads) ** -0.5
        attended = torch.einsum("bnmh,bmhd->bnhd", scores.softmax(dim=2), kv[:, :, 1]).reshape(b, n, dim)
        x = x + F.linear(attended, w[p + "attn.project.weight"], w[p + "attn.project.bias"])
        h = F.layer_norm(x, (dim,), w[p + "norm2.weight"], w[p + "norm2.bias"])
        h = F.relu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        layer += 1
    return x[:, clip_length:]


def reference_logits(weights, image_embeds, input_ids, heads=4, normalize=False) -> torch.Tensor:
    if normalize:
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    gpt = GPT2LMHeadModel(GPT2Config(**TEXT_CONFIG)).eval()
    legacy_buffer = re.compile(r"\.attn\.(bias|masked_bias)$")
    gpt.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("gpt.") and not legacy_buffer.search(k)})
    prefix = reference_prefix(weights, image_embeds, heads)
    embeds = torch.cat([prefix, gpt.transformer.wte(input_ids)], dim=1)
    return gpt(inputs_embeds=embeds).logits[:, PREFIX - 1 : -1]


def load(path, **kwargs) -> ClipCapPolicy:
    options = {
        "tokenizer": TOKENIZER,
        "text_config": TEXT_CONFIG,
        "clip_model_name": None,
        "clip_pretrained": None,
        "clip_model_cfg": TINY_OPEN_CLIP_CFG,
        "mapper_num_heads": 4,
    }
    return ClipCapPolicy.from_original_checkpoint(path, **(options | kwargs))


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_original_checkpoint_gives_reference_logits(tmp_path, mapper):
    weights = original_mlp_checkpoint() if mapper == "mlp" else original_transformer_checkpoint()
    torch.save(weights, tmp_path / "weights.pt")
    policy = load(tmp_path / "weights.pt")
    assert policy.config.mapper_type == mapper and policy.config.prefix_length == PREFIX
    assert policy.config.normalize_prefix == (mapper == "transformer")
    if mapper == "transformer":
        assert policy.config.mapper_clip_length == 3 and policy.config.mapper_num_layers == 2
    image_embeds = torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(5))
    input_ids = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits = policy(image_embeds=image_embeds, input_ids=input_ids).logits
        expected = reference_logits(weights, image_embeds, input_ids, normalize=mapper == "transformer")
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert policy.generate_captions(image_embeds=image_embeds, max_new_tokens=5).sequences.shape[0] == 3


def test_converted_checkpoint_round_trips_through_save_pretrained(tmp_path):
    torch.save(original_mlp_checkpoint(seed=1), tmp_path / "coco_weights.pt")
    policy = load(tmp_path / "coco_weights.pt")
    policy.save_pretrained(tmp_path / "saved")
    loaded = ClipCapPolicy.from_pretrained(tmp_path / "saved")
    image_embeds, ids = torch.randn(2, CLIP_DIM), torch.randint(3, 40, (2, 5))
    assert torch.equal(
        policy(image_embeds=image_embeds, input_ids=ids).logits,
        loaded(image_embeds=image_embeds, input_ids=ids).logits,
    )


def test_missing_and_unexpected_keys_are_named(tmp_path):
    weights = original_mlp_checkpoint()
    del weights["gpt.transformer.h.1.mlp.c_fc.weight"]
    torch.save(weights, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"Missing keys: language_model\.transformer\.h\.1\.mlp\.c_fc\.weight"):
        load(tmp_path / "missing.pt")
    weights = original_mlp_checkpoint() | {"clip_project.extra.weight": torch.zeros(1), "optimizer": torch.zeros(1)}
    torch.save(weights, tmp_path / "unexpected.pt")
    with pytest.raises(
        ValueError, match=r"Unexpected keys in the ClipCap checkpoint: clip_project\.extra\.weight, optimizer"
    ):
        load(tmp_path / "unexpected.pt")
    weights = original_mlp_checkpoint() | {"gpt.transformer.h.7.ln_1.weight": torch.ones(TEXT_CONFIG["n_embd"])}
    torch.save(weights, tmp_path / "deeper.pt")
    with pytest.raises(ValueError, match=r"Unexpected keys: language_model\.transformer\.h\.7\.ln_1\.weight"):
        load(tmp_path / "deeper.pt")
    torch.save({k: v for k, v in original_mlp_checkpoint().items() if k.startswith("gpt.")}, tmp_path / "gpt.pt")
    with pytest.raises(ValueError, match="holds no ClipCap mapper"):
        load(tmp_path / "gpt.pt")


def test_prefix_length_and_encoder_width_must_fit_the_weights(tmp_path):
    torch.save(original_mlp_checkpoint(), tmp_path / "mlp.pt")
    with pytest.raises(ValueError, match=r"prefix_length=10 does not fit the checkpoint.*prefix of 4 embeddings"):
        load(tmp_path / "mlp.pt", prefix_length=10)
    torch.save(original_transformer_checkpoint(), tmp_path / "transformer.pt")
    with pytest.raises(ValueError, match=r"prefix_length=40 does not fit"):
        load(tmp_path / "transformer.pt", prefix_length=40)
    torch.save(original_mlp_checkpoint(clip_dim=16), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="reads 16-dimensional image embeddings but the encoder .* produces 32"):
        load(tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="Shape mismatch"):
        load(tmp_path / "mlp.pt", text_config=TEXT_CONFIG | {"vocab_size": 99})
