"""Pretrain the world's captioner: a small ClipCap trained by maximum likelihood on the "human" alt-text.

It plays the paper's ClipCap-ConCap: the retriever's image encoder (frozen, as ClipCap keeps CLIP frozen),
an MLP mapper and a small GPT-2 over the world's word-level vocabulary, trained on the mostly vague human
captions of the training split. Greedy decoding then writes vague captions, while descriptive ones keep some
probability, which is what DiscriTune needs to find them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from ..models.clipcap import ClipCapConfig, ClipCapPolicy


def default_gpt2_config() -> dict[str, Any]:
    """The world's GPT-2: 3 layers of width 96, 4 heads, exact GELU, no dropout (the vocabulary comes from the
    tokenizer)."""
    return {
        "n_positions": 64,
        "n_embd": 96,
        "n_layer": 3,
        "n_head": 4,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "activation_function": "gelu",  # GPT-2's tanh approximation costs a third of a CPU step at this size
    }


@dataclass
class CaptionerTrainingConfig:
    """How the world's ClipCap is built and trained.

    Args:
        gpt2_config: `GPT2Config` fields of the language model (`vocab_size` and the special token ids are set
            from the tokenizer); `{}` for :func:`default_gpt2_config`.
        prefix_length: GPT-2 input embeddings the mapper makes from one image.
        steps: optimizer steps.
        batch_size: (image, caption) pairs per step, drawn from all reference captions of the training split.
        learning_rate: peak AdamW learning rate, with linear warm-up and cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        seed: seeds the mapper and GPT-2 initialisation and the batches.
    """

    gpt2_config: dict[str, Any] = field(default_factory=dict)
    prefix_length: int = 4
    steps: int = 800
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_world_clipcap(
    retriever_model_cfg: dict[str, Any],
    retriever_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    config: CaptionerTrainingConfig,
) -> ClipCapPolicy:
    """A new ClipCap on the retriever's image encoder: encoder weights copied, mapper and GPT-2 random."""
    gpt2_config = {**default_gpt2_config(), **config.gpt2_config}
    gpt2_config.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    clipcap_config = ClipCapConfig(
        clip_model_name=None,
        clip_model_cfg=retriever_model_cfg,
        mapper_type="mlp",
        prefix_length=config.prefix_length,
        text_config=gpt2_config,
    )
    torch.manual_seed(config.seed)
    policy = ClipCapPolicy(clipcap_config, tokenizer=tokenizer)
    policy.visual.load_state_dict(retriever_model.visual.state_dict())
    return policy


@torch.no_grad()
def encode_split(
    policy: ClipCapPolicy, split: datasets.Dataset, batch_size: int = 500, progress: bool = True
) -> torch.Tensor:
    """The frozen encoder's `[N, D]` embeddings of every image of `split` (computed once, reused every step)."""
    chunks = []
    for start in tqdm(range(0, len(split), batch_size), desc="captioner: encode images", disable=not progress):
        images = split[start : start + batch_size]["image"]
        chunks.append(policy.encode_images(policy.preprocess(images)))
    return torch.cat(chunks)


def train_captioner(
    policy: ClipCapPolicy,
    train_split: datasets.Dataset,
    config: CaptionerTrainingConfig,
    image_embeds: torch.Tensor | None = None,
    progress: bool = True,
) -> ClipCapPolicy:
    """Maximum-likelihood training of `policy`'s mapper and GPT-2 on every reference caption of `train_split`.

    Args:
        policy: a ClipCap with a tokenizer (e.g. from :func:`build_world_clipcap`).
        train_split: rows with an `image` and its `captions` (a list of strings).
        config: steps, batch size, learning rate, seed.
        image_embeds: `[N, D]` precomputed `policy.encode_images` of the split's images, if at hand.

    Returns:
        The trained policy, in eval mode.
    """
    tokenizer = policy.tokenizer
    if image_embeds is None:
        image_embeds = encode_split(policy, train_split, progress=progress)  # [N, D]
    captions = train_split["captions"]
    image_index = torch.tensor([i for i, refs in enumerate(captions) for _ in refs])  # [C]
    encoded = tokenizer([text for refs in captions for text in refs], padding=True, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]  # [C, T]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    if len(image_index) < config.batch_size:
        raise ValueError(
            f"The training split has {len(image_index)} captions, fewer than batch_size={config.batch_size}; "
            "use a smaller batch or a larger split."
        )

    generator = np.random.default_rng(config.seed)
    parameters = [parameter for parameter in policy.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1.0 + np.cos(np.pi * min(1.0, step / config.steps)))
        ),
    )
    policy.train()
    bar = tqdm(range(config.steps), desc="captioner: maximum-likelihood training", disable=not progress)
    for step in bar:
        rows = torch.from_numpy(generator.choice(len(image_index), size=config.batch_size, replace=False))
        length = int(attention_mask[rows].sum(dim=1).max())  # trim the batch to its longest caption
        loss = policy(
            image_embeds=image_embeds[image_index[rows]],
            input_ids=input_ids[rows, :length],
            attention_mask=attention_mask[rows, :length],
            labels=labels[rows, :length],
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 20 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return policy.eval()
