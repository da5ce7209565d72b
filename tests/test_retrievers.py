"""Retrievers: frozen, normalised, text truncated at 77 tokens and trimmed to the longest caption without changes."""

import pytest
import torch
from PIL import Image
from torch import nn

from discritune_trl import OpenCLIPRetriever, Retriever, TransformersCLIPRetriever
from discritune_trl.testing.retrievers import (
    TRANSFORMERS_RETRIEVER_TYPES,
    save_transformers_retriever,
    tiny_open_clip_config,
    tiny_open_clip_retriever,
    tiny_transformers_clip_retriever,
)


CAPTIONS = ["", "a red circle!", "two black dogs and one white cat play in the park at sunset."]
LONG_CAPTION = "word " * 120


def _images():
    return [
        Image.new("RGB", (40, 30), "red"),
        Image.new("L", (20, 20), 128),  # grayscale
        Image.new("RGBA", (33, 64), (0, 0, 255, 100)),
    ]


@pytest.fixture(scope="module")
def open_clip_retriever():
    return tiny_open_clip_retriever(seed=0)


@pytest.fixture(scope="module", params=TRANSFORMERS_RETRIEVER_TYPES)
def transformers_retriever(request):
    return tiny_transformers_clip_retriever(seed=0, model_type=request.param)


def _assert_unit_rows(embeds, rows, dim):
    assert embeds.shape == (rows, dim)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(rows))


def _assert_frozen(retriever: Retriever):
    assert all(not p.requires_grad for p in retriever.parameters())
    nn.ModuleDict({"judge": retriever}).train()  # a Trainer switches the whole model to train mode
    assert not any(module.training for module in retriever.modules())


# ---- OpenCLIPRetriever ----------------------------------------------------------------------------------------


def test_open_clip_encodes_any_image_mode_and_normalises(open_clip_retriever):
    pixel_values = open_clip_retriever.preprocess(_images())
    assert pixel_values.shape == (3, 3, 32, 32)
    _assert_unit_rows(open_clip_retriever.encode_images(pixel_values), 3, 16)
    _assert_unit_rows(open_clip_retriever.encode_texts(CAPTIONS), 3, 16)
    assert open_clip_retriever.embed_dim == 16
    torch.testing.assert_close(open_clip_retriever.logit_scale, torch.tensor(1 / 0.07))
    _assert_frozen(open_clip_retriever)


def test_open_clip_trims_tokens_to_longest_caption(open_clip_retriever):
    tokens = open_clip_retriever.tokenize(CAPTIONS)
    untrimmed = open_clip_retriever.tokenize(CAPTIONS, trim=False)
    assert untrimmed.shape == (3, 77)
    longest = int((untrimmed != 0).sum(dim=1).max())
    assert tokens.shape == (3, longest) and longest < 77
    assert torch.equal(tokens, untrimmed[:, :longest])


def test_open_clip_trimmed_text_embeddings_equal_untrimmed(open_clip_retriever):
    # "!" is token id 0, the same id as padding: trimming must still keep the whole caption.
    captions = CAPTIONS + ["!!!", "wow !"]
    trimmed = open_clip_retriever.encode_texts(captions)
    untrimmed = open_clip_retriever.encode_texts(captions, trim=False)
    torch.testing.assert_close(trimmed, untrimmed, rtol=1e-5, atol=1e-6)
    # ...and both equal open_clip's own encode_text on the 77-token batch.
    reference = open_clip_retriever.model.encode_text(
        open_clip_retriever.tokenize(captions, trim=False), normalize=True
    )
    torch.testing.assert_close(trimmed, reference, rtol=1e-5, atol=1e-6)


def test_open_clip_truncates_long_captions_at_context_length(open_clip_retriever):
    tokens = open_clip_retriever.tokenize([LONG_CAPTION, "short"])
    assert tokens.shape == (2, 77)
    assert tokens[0, -1] == open_clip_retriever.tokenizer.eot_token_id
    # The truncated caption keeps its first 75 words: it embeds like exactly those 75 words.
    torch.testing.assert_close(
        open_clip_retriever.encode_texts([LONG_CAPTION]), open_clip_retriever.encode_texts(["word " * 75])
    )


def test_open_clip_from_model_and_checkpoint_match(open_clip_retriever, tmp_path):
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected_images = open_clip_retriever.encode_images(pixel_values)
    expected_texts = open_clip_retriever.encode_texts(CAPTIONS)

    wrapped = OpenCLIPRetriever.from_model(
        open_clip_retriever.model, open_clip_retriever.image_transform, open_clip_retriever.tokenizer
    )
    assert torch.equal(wrapped.encode_images(pixel_values), expected_images)
    _assert_frozen(wrapped)

    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save({"state_dict": open_clip_retriever.model.state_dict()}, checkpoint)
    with torch.random.fork_rng():
        torch.manual_seed(123)  # different random init: the checkpoint must overwrite it
        loaded = OpenCLIPRetriever(None, model_cfg=tiny_open_clip_config(), checkpoint_path=str(checkpoint))
    assert torch.equal(loaded.encode_images(pixel_values), expected_images)
    assert torch.equal(loaded.encode_texts(CAPTIONS), expected_texts)


def test_open_clip_without_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="pretrained='openai'"):
        OpenCLIPRetriever("ViT-B-32")
    with pytest.raises(TypeError, match="not an open_clip model"):
        OpenCLIPRetriever.from_model(nn.Linear(2, 2), None, None)


# ---- TransformersCLIPRetriever --------------------------------------------------------------------------------


def test_transformers_retriever_encodes_and_is_frozen(transformers_retriever):
    pixel_values = transformers_retriever.preprocess(_images())
    if transformers_retriever.reads_pixels_only:
        assert pixel_values.shape == (3, 3, 32, 32)
    else:  # SigLIP2: at most 16 patches of 8x8x3 pixels per image, a mask of the real ones, each image's grid
        assert pixel_values["pixel_values"].shape == (3, 16, 192)
        assert pixel_values["pixel_attention_mask"].shape == (3, 16) and pixel_values["spatial_shapes"].shape == (3, 2)
    dim = transformers_retriever.embed_dim
    _assert_unit_rows(transformers_retriever.encode_images(pixel_values), 3, dim)
    _assert_unit_rows(transformers_retriever.encode_texts(CAPTIONS + [LONG_CAPTION]), 4, dim)
    _assert_frozen(transformers_retriever)


def test_transformers_retriever_truncates_and_pads_as_trained(transformers_retriever):
    input_ids = transformers_retriever.tokenize(["a", LONG_CAPTION])["input_ids"]
    assert input_ids.shape[1] == transformers_retriever.context_length
    short = transformers_retriever.tokenize(["a red circle", ""])["input_ids"]
    if transformers_retriever.pads_to_max_length:  # SigLIP pools the last position
        assert short.shape[1] == transformers_retriever.context_length
    else:  # CLIP: padded to the longest caption, same embeddings as padded to 77
        assert short.shape[1] < transformers_retriever.context_length
        full = transformers_retriever.tokenizer(
            ["a red circle", ""], padding="max_length", max_length=77, return_tensors="pt"
        )
        reference = transformers_retriever.model.get_text_features(**full).pooler_output
        torch.testing.assert_close(
            transformers_retriever.encode_texts(["a red circle", ""]),
            torch.nn.functional.normalize(reference, dim=-1),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("model_type", TRANSFORMERS_RETRIEVER_TYPES)
def test_transformers_retriever_from_pretrained_round_trip(model_type, tmp_path):
    retriever = tiny_transformers_clip_retriever(seed=1, model_type=model_type)
    loaded = TransformersCLIPRetriever.from_pretrained(save_transformers_retriever(retriever, tmp_path))
    assert type(loaded.model) is type(retriever.model) and type(loaded.tokenizer) is type(retriever.tokenizer)
    images = _images()
    assert torch.equal(
        loaded.encode_images(loaded.preprocess(images)), retriever.encode_images(retriever.preprocess(images))
    )
    assert torch.equal(loaded.encode_texts(CAPTIONS), retriever.encode_texts(CAPTIONS))
    torch.testing.assert_close(loaded.logit_scale, retriever.logit_scale)


# ---- SigLIP2 (NaFlex): patches, patch mask and grid shapes instead of one pixel tensor --------------------------


@pytest.fixture(scope="module")
def siglip2_retriever():
    return tiny_transformers_clip_retriever(seed=0, model_type="siglip2")


def test_siglip2_keeps_aspect_ratios_and_masks_the_padding_patches(siglip2_retriever):
    images = [Image.new("RGB", (64, 16), "red"), Image.new("RGB", (16, 48), "blue"), Image.new("RGB", (32, 32))]
    inputs = siglip2_retriever.preprocess(images)
    grids = inputs["spatial_shapes"].tolist()  # (rows, columns) of patches
    assert grids[0][1] > grids[0][0] and grids[1][0] > grids[1][1] and grids[2] == [4, 4]  # wide, tall, square
    assert inputs["pixel_attention_mask"].sum(dim=1).tolist() == inputs["spatial_shapes"].prod(dim=1).tolist()
    padded = ~inputs["pixel_attention_mask"].bool().all(dim=1)  # images filling fewer than 16 patches
    assert padded.tolist() == [False, True, False]  # 2x8 and 4x4 patches fill all 16, the tall 16x48 image 6x2

    # An image embeds the same alone as beside images of other shapes: the padding patches are masked out.
    together = siglip2_retriever.encode_images(inputs)
    alone = torch.cat([siglip2_retriever.encode_images(siglip2_retriever.preprocess([image])) for image in images])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    # ...and the mask matters: unmasking the padding patches changes the embeddings of the images that have them.
    unmasked = dict(inputs, pixel_attention_mask=torch.ones_like(inputs["pixel_attention_mask"]))
    changed = (siglip2_retriever.encode_images(unmasked) - together).abs().amax(dim=1) > 1e-4
    assert torch.equal(changed, padded)


def test_siglip2_refuses_bare_pixels_and_incomplete_inputs(siglip2_retriever):
    inputs = siglip2_retriever.preprocess(_images())
    with pytest.raises(ValueError, match="not a bare Tensor: make them with its preprocess"):
        siglip2_retriever.encode_images(inputs["pixel_values"])
    with pytest.raises(ValueError, match=r"also reads \['spatial_shapes'\]"):
        siglip2_retriever.encode_images({k: v for k, v in inputs.items() if k != "spatial_shapes"})
    with pytest.raises(ValueError, match="different numbers of images"):
        siglip2_retriever.encode_images(dict(inputs, spatial_shapes=inputs["spatial_shapes"][:2]))


def test_siglip2_text_is_lowercased_and_padded_to_the_full_context(siglip2_retriever, tmp_path):
    # A siglip2 folder loads Siglip2Tokenizer through AutoTokenizer: it lowercases, as SigLIP2 was trained.
    loaded = TransformersCLIPRetriever.from_pretrained(save_transformers_retriever(siglip2_retriever, tmp_path))
    assert loaded.pads_to_max_length and loaded.tokenize(["a"])["input_ids"].shape == (1, loaded.context_length)
    assert torch.equal(loaded.encode_texts(["A RED Circle."]), loaded.encode_texts(["a red circle."]))


def test_transformers_retriever_needs_tokenizer_and_image_processor():
    retriever = tiny_transformers_clip_retriever(model_type="clip")
    with pytest.raises(ValueError, match="tokenizer and an image processor"):
        TransformersCLIPRetriever(retriever.model, tokenizer=retriever.tokenizer)
