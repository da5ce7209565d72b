"""Bring your own captioner: a prefix mapper + a tiny GPT-2 over its own word list, fine-tuned with DiscriTune.

The policy is one class (`docs/custom_captioner.md` explains each rule it follows); it trains a few steps against a
toy colour retriever on generated images, is evaluated with greedy decoding (it declares no beam search), saved,
and loaded back by `model_type` through `load_policy`, offline and in seconds:

    python examples/custom_captioner.py --output_dir /tmp/custom-captioner
"""

import argparse

import datasets
import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, PreTrainedConfig, PreTrainedModel

from discritune_trl import DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.models import (
    CaptioningPolicy,
    captions_from_generated,
    check_generation_arguments,
    full_stop_token_ids,
    load_policy,
    register_policy,
)
from discritune_trl.testing.evaluation import PALETTE, ColorRetriever, mean_color_pixels, solid_image


WORDS = ["<eos>", ".", "a", "square", *PALETTE]  # id = position; "<eos>" (0) also pads


class WordCaptionerConfig(PreTrainedConfig):
    model_type = "word_captioner"  # what `load_policy` looks up (see `register_policy` below)
    words: list | None = None
    prefix_length: int = 2
    hidden_size: int = 32
    tie_word_embeddings: bool = True  # with `_tied_weights_keys`: the output layer is saved once, tied on load


class WordCaptioner(CaptioningPolicy, PreTrainedModel):  # CaptioningPolicy first: its forward and save come first
    config_class = WordCaptionerConfig
    supports_beam_search = False  # our decoding loop is greedy / sampling: evaluation decodes greedily
    _tied_weights_keys = {"lm_head.weight": "gpt.wte.weight"}

    def __init__(self, config: WordCaptionerConfig):
        super().__init__(config)
        size, prefix = config.hidden_size, config.prefix_length
        gpt_config = GPT2Config(vocab_size=len(config.words), n_embd=size, n_layer=2, n_head=2, n_positions=64,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
        self.gpt = GPT2Model(gpt_config)
        self.lm_head = nn.Linear(size, len(config.words), bias=False)  # tied to gpt.wte by post_init
        self.mapper = nn.Sequential(nn.Linear(3, size * prefix), nn.Tanh(), nn.Linear(size * prefix, size * prefix))
        self.stop_token_ids = full_stop_token_ids(config.words, extra_ids=[0])  # "." and "<eos>"
        self.post_init()

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.config.words[i] for i in ids if i != 0).replace(" .", ".")

    def preprocess(self, images):
        return mean_color_pixels(images)  # [N, 3, 1, 1]

    def encode_images(self, pixel_values):  # frozen (no weights): cached once per image by the trainer
        return pixel_values.float().flatten(1)  # [N, 3]

    def image_conditioning(self, pixel_values, image_embeds):
        features = self.encode_images(pixel_values) if image_embeds is None else image_embeds
        return self.mapper(features.to(self.dtype)).view(len(features), self.config.prefix_length, -1)  # [N, P, E]

    def caption_logits(self, conditioning, caption_ids, caption_mask):
        embeds = torch.cat([conditioning, self.gpt.wte(caption_ids)], dim=1)  # [N, P + T, E]
        mask = torch.cat([torch.ones_like(caption_mask[:, :1]).expand(-1, conditioning.shape[1]), caption_mask], 1)
        hidden = self.gpt(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.lm_head(hidden[:, conditioning.shape[1] - 1 : -1])  # [N, T, V]: position t predicts token t

    def generate_captions(self, pixel_values=None, image_embeds=None, *, max_new_tokens=40, do_sample=False,
                          num_beams=1, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=1):  # fmt: skip
        check_generation_arguments(max_new_tokens, do_sample, num_beams, num_return_sequences)
        if num_beams > 1 or top_k or top_p < 1:
            raise ValueError("WordCaptioner decodes greedily or samples with temperature only.")
        with self.generation_mode():  # eval mode, no gradients
            embeds = self.image_conditioning(pixel_values, image_embeds).repeat_interleave(num_return_sequences, 0)
            new_ids = []
            stops = torch.tensor(self.stop_token_ids)
            done = torch.zeros(len(embeds), dtype=torch.bool)
            for _ in range(max_new_tokens):  # one token per step; captions are short, so no KV cache
                logits = self.lm_head(self.gpt(inputs_embeds=embeds).last_hidden_state[:, -1])  # [N, V]
                ids = (
                    torch.multinomial((logits / temperature).softmax(-1), 1)[:, 0] if do_sample else logits.argmax(-1)
                )
                new_ids.append(ids.masked_fill(done, 0))
                done |= torch.isin(ids, stops)
                if done.all():
                    break
                embeds = torch.cat([embeds, self.gpt.wte(ids)[:, None]], dim=1)  # [N, P + t, E]
        return captions_from_generated(torch.stack(new_ids, 1), self.stop_token_ids, 0, decode=self.decode)


register_policy(WordCaptionerConfig, WordCaptioner)


def main(output_dir: str, max_steps: int = 4) -> list[str]:
    torch.manual_seed(0)
    colors = list(PALETTE) * 4  # 40 one-colour images
    images = datasets.Dataset.from_dict({"image": [solid_image(c, size=16) for c in colors]})
    policy = WordCaptioner(WordCaptionerConfig(words=WORDS))
    args = DiscriTuneConfig(output_dir=output_dir, per_device_train_batch_size=10, max_steps=max_steps,
                            learning_rate=1e-3, max_completion_length=6, report_to="none", use_cpu=True,
                            save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = DiscriTuneTrainer(
        model=policy,
        reward_model=ColorRetriever(),  # the trainer builds the reward model from the config
        args=args,
        train_dataset=images.cast_column("image", datasets.Image()),
        eval_dataset=images.select(range(10)).cast_column("image", datasets.Image()),
    )
    trainer.train()
    print({key: round(value, 2) for key, value in trainer.evaluate().items()})  # greedy: see supports_beam_search
    trainer.save_model()

    loaded = load_policy(output_dir)  # the class comes from config.json's model_type, via register_policy
    pixels = policy.preprocess([solid_image(c) for c in PALETTE])
    before = policy.generate_captions(pixels, max_new_tokens=6).texts
    after = loaded.generate_captions(pixels, max_new_tokens=6).texts
    assert type(loaded) is WordCaptioner and before == after, (before, after)
    print("captions after loading back:", after)
    return after


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="custom-captioner-output")
    parser.add_argument("--max_steps", type=int, default=4)
    cli = parser.parse_args()
    main(cli.output_dir, cli.max_steps)
