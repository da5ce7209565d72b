"""A retriever written from scratch and used as DiscriTune's reward, offline, in a few lines.

The "retriever" below embeds an image as its mean colour and a caption as the colour words it mentions. It is a
toy, but it follows the same contract as CLIP: L2-normalised embeddings in one space and a `logit_scale`.

    python examples/custom_retriever.py
"""

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from discritune_trl import DiscriminativeRewardModel, Retriever


COLOR_WORDS = ("red", "green", "blue")


class ColorRetriever(Retriever):
    """Images: mean RGB colour. Captions: counts of the words "red", "green", "blue"."""

    embed_dim = 3

    def __init__(self):
        super().__init__()
        self.freeze()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([pil_to_tensor(image.convert("RGB").resize((16, 16))) for image in images]).float() / 255

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(pixel_values.mean(dim=(2, 3)) + 1e-3, dim=-1)  # [N, 3]

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        counts = torch.tensor([[text.lower().count(word) for word in COLOR_WORDS] for text in texts])
        return F.normalize(counts.float() + 1e-3, dim=-1)  # [B, 3]; "" embeds as grey

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(5.0)


def main() -> dict[str, torch.Tensor]:
    images = [Image.new("RGB", (32, 32), color) for color in ("red", "green", "blue")]
    reward_model = DiscriminativeRewardModel(ColorRetriever())  # reward_type="log_prob", as in the paper
    pixel_values = reward_model.preprocess(images)

    results = {}
    for name, captions in {
        "right colours": ["a red square.", "a green square.", "a blue square."],
        "wrong colours": ["a blue square.", "a red square.", "a green square."],
        "no colours": ["a square.", "a square.", "a square."],
    }.items():
        output = reward_model(captions, pixel_values=pixel_values)
        results[name] = output.rewards
        rewards = ", ".join(f"{reward:.3f}" for reward in output.rewards.tolist())
        print(f"{name:>14}: rewards [{rewards}]  accuracy {output.accuracy.tolist()}")
    return results


if __name__ == "__main__":
    main()
