"""`DiscriTuneTrainer`: REINFORCE fine-tuning of a captioner against a frozen retriever's judgement."""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import datasets
import torch
from peft import get_peft_model
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, speed_metrics

from ..evaluation.retrieval import precision_at_1, usable_num_candidates
from ..models.auto import load_policy
from ..models.policy import CaptioningPolicy, CaptionOutput, reduce_token_log_probs, register_fsdp_forward_methods
from ..retrievers.base import Retriever
from ..rewards import build_reward_model, check_reward_model_matches, describe_reward_model
from ..rewards.distributed import gather_objects, gather_rows
from ..rewards.pools import PoolLayout, pool_layout
from ..utils.images import decode_image
from ..utils.progress import datasets_progress_bars
from .baselines import RunningMeanBaseline, leave_one_out_baseline, scale_advantages
from .batch import INDEX_COLUMN, POLICY_EMBEDS_COLUMN, RETRIEVER_EMBEDS_COLUMN, DiscriTuneBatch
from .callbacks import CollapseAlarmCallback
from .checkpoints import check_architecture, checkpoint_problem, last_complete_checkpoint, read_baseline_state
from .collator import DiscriTuneCollator
from .completions import completions_path, new_run_id, print_completions, report_completions, write_completions
from .discritune_config import DiscriTuneConfig
from .embedding_cache import cache_frozen_embeddings, policy_caches_image_features
from .model_card import write_model_card


logger = logging.getLogger(__name__)


class DiscriTuneTrainer(Trainer):
    """Fine-tune an image captioner so that a frozen retriever finds the captioned image (DiscriTune).

    One training step (see `compute_loss`): caption the batch without gradients, let the reward model score each
    caption against the images of its candidate pool (`args.pool_size`), subtract the baseline, and minimise
    `-mean(advantage * log p(caption | image))` (+ `beta` * KL to the initial policy).

    Args:
        model: the captioner, any `PreTrainedModel` implementing `CaptioningPolicy` (e.g. `ClipCapPolicy`).
        reward_model: the retriever(s) — a `Retriever` or a list of them — from which the trainer builds the
            `DiscriminativeRewardModel` with `build_reward_model` and the config's `reward_type`, `num_hard_negatives`
            and `hard_negative_similarity_ceiling` (with `num_hard_negatives > 0` the hard-negative bank is the
            training images, taken from the frozen-embedding cache when it is on); or a `DiscriminativeRewardModel`,
            which then keeps its own settings: a reward setting the config sets to a non-default value that disagrees
            with it is a `ValueError` (see `check_reward_model_matches`).
        args: a `DiscriTuneConfig`; defaults to the paper's settings with `output_dir="discritune-output"`.
        train_dataset: a `datasets.Dataset` with an image column (`args.image_column`).
        eval_dataset: images to evaluate retrieval P@1 on.
        processing_class: the policy's tokenizer or processor, saved beside checkpoints; defaults to the policy's
            `processing_class` (see `CaptioningPolicy`).
        data_collator: defaults to `DiscriTuneCollator.from_models(model, reward_model)`; a custom one returns a
            `DiscriTuneBatch` (or a dict of its fields).
        callbacks, optimizers: as in `transformers.Trainer`.
        peft_config: a `peft.PeftConfig`; the policy is wrapped with `peft.get_peft_model` and only adapters train.

    Attributes:
        collapse_alarm: the `CollapseAlarmCallback` watching the training logs (`None` with `collapse_alarm=False`);
            its `alarms` list what it warned of.
    """

    _tag_names = ["discritune", "image-captioning", "reinforce"]

    def __init__(
        self,
        model: nn.Module,
        reward_model: nn.Module,
        args: DiscriTuneConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: Any | None = None,
        data_collator: Any | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any | None = None,
    ):
        if args is None:
            args = DiscriTuneConfig(output_dir="discritune-output")
        if not isinstance(args, DiscriTuneConfig):
            raise TypeError(f"args must be a DiscriTuneConfig, got {type(args).__name__}.")
        # Every argument is checked before anything passed in is changed (dropout switched off, PEFT wrapping).
        model = _as_policy(model)
        _check_policy(model)
        images = train_dataset  # as given: the reward model's hard-negative bank reads the decoded images
        train_dataset = _prepare_dataset(train_dataset, args.image_column, "train_dataset")
        eval_dataset = _prepare_dataset(eval_dataset, args.image_column, "eval_dataset")
        _check_train_size(train_dataset, args)
        self.reward_model, self._bank_from_cache = _as_reward_model(reward_model, args, images)
        if peft_config is not None:
            model = get_peft_model(model, peft_config)
        if args.disable_dropout:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.ref_model = _frozen_reference(model) if args.beta > 0 and peft_config is None else None
        if processing_class is None:
            processing_class = model.processing_class
        if data_collator is None:
            data_collator = DiscriTuneCollator.from_models(model, self.reward_model, image_column=args.image_column)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._pools = self._check_pools()
        self._check_best_model_metric()
        self.collapse_alarm = None
        if args.collapse_alarm:
            self.collapse_alarm = CollapseAlarmCallback(
                window=args.collapse_window,
                accuracy_drop=args.collapse_accuracy_drop,
                reward_drop=args.collapse_reward_drop,
                length_ratio=args.collapse_length_ratio,
                stop=args.stop_on_collapse,
            )
            self.add_callback(self.collapse_alarm)
        if args.fp16 and self.accelerator.device.type == "cpu":
            logger.warning(
                "fp16=True on a CPU: Accelerate runs fp16 autocast and loss scaling on CUDA only, so this run trains "
                "in fp32. Use bf16=True for mixed precision on a CPU."
            )
        if args.bf16 and self.accelerator.device.type == "cpu" and cpu_emulates_bf16():
            logger.warning(
                "bf16=True on a CPU without bf16 matrix instructions (AVX512-BF16 or AMX): torch emulates bf16 matrix "
                "products there, and a training step runs many times slower than in fp32 (docs/throughput.md "
                "measures it). Train in fp32 (bf16=False) on this CPU."
            )
        self.reward_model.to(self.accelerator.device).eval()
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)
        self.add_callback(RunningMeanBaseline())  # saved in every checkpoint's trainer_state.json
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._completions: list[dict[str, Any]] = []
        self.run_id = new_run_id()  # names this run's completions file
        self.dataset_name: str | None = None  # the training data as the user named it, for the model cards
        self._num_unreadable_images = 0
        self._num_skipped_batches = 0
        self._unreadable_in_cache: dict[int, int] = {}  # id(cached dataset) -> rows dropped while caching it
        self._warned_greedy_evaluation = False
        self._one_pass = self._use_one_pass_step()
        self._static_cache = self._use_static_cache()
        if args.cache_embeddings:
            with datasets_progress_bars(enabled=not args.disable_tqdm):  # the cache pass's bars too
                self.train_dataset = self._cache_embeddings(self.train_dataset, "train_dataset")
                self.eval_dataset = self._cache_embeddings(self.eval_dataset, "eval_dataset")
        if self._bank_from_cache:  # the training images' retriever embeddings, computed once by the cache
            self.reward_model.set_hard_negative_bank(
                _cached_retriever_embeds(self.train_dataset), num_hard_negatives=args.num_hard_negatives
            )
        logger.info("Reward model: %s", describe_reward_model(self.reward_model))
        if args.cache_embeddings:
            _check_train_size(self.train_dataset, args)  # again without the images the cache pass could not read

    # Trainer divides our per-batch mean loss by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    # ------------------------------------------------------------------ the step

    def compute_loss(self, model, inputs: DiscriTuneBatch, return_outputs=False, num_items_in_batch=None):
        """One DiscriTune step: generate -> reward -> baseline -> log-probs -> loss."""
        self._num_unreadable_images += self._global_sum(inputs.num_unreadable_images)
        policy = self._unwrap_policy(model)
        image_inputs = self._encode_policy_images(policy, inputs.policy_inputs)
        captions = self._generate(model, policy, image_inputs)  # one-pass step: with the tokens' log-probs
        rewards, global_rewards = self._reward(captions.texts, inputs)
        advantages = self._advantages(rewards, global_rewards, policy, image_inputs, inputs)
        token_log_probs = captions.token_log_probs
        if token_log_probs is None:  # two-pass step: a teacher-forced pass with gradients
            token_log_probs = self._token_log_probs(model, captions, image_inputs)
        log_probs = reduce_token_log_probs(token_log_probs, captions.caption_mask, self.args.log_prob_reduction)
        loss = -(advantages * log_probs).mean()
        if self.args.beta > 0:
            kl = self._kl(policy, captions, image_inputs, token_log_probs)
            loss = loss + self.args.beta * kl
        self._check_finite_loss(loss, inputs, image_inputs, token_log_probs)
        self._record_captions(captions, inputs.image_index, rewards, advantages)
        return (loss, captions) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, except for a batch left with too few readable images, which is skipped (no
        forward, no backward: the optimizer step that follows changes nothing) and counted in
        `data/skipped_batches`."""
        inputs = self._prepare_inputs(inputs)
        if self._too_few_readable_images(inputs):
            return torch.tensor(0.0, device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def _too_few_readable_images(self, inputs: DiscriTuneBatch) -> bool:
        """Whether unreadable images left this step without an image on some process, or without a distractor (one
        image in all, and no hard-negative bank). Decided on the counts of every process, so all skip together."""
        counts, _ = gather_rows(torch.tensor([inputs.num_images], device=self.accelerator.device))
        minimum = 1 if getattr(self.reward_model, "num_hard_negatives", 0) > 0 else 2
        if int(counts.min()) > 0 and int(counts.sum()) >= minimum:
            return False
        self._num_unreadable_images += self._global_sum(inputs.num_unreadable_images)
        self._num_skipped_batches += 1
        logger.warning(
            "Skipping the batch of training step %d: unreadable images left %d readable image(s) (per process: %s), "
            "too few to reward captions against distractors. Skipped batches are counted in data/skipped_batches.",
            self.state.global_step + 1,
            int(counts.sum()),
            counts.tolist(),
        )
        return True

    def _unwrap_policy(self, model) -> nn.Module:
        """The policy inside `model`, for the calls that are not its `forward` (the frozen encoder, generation).

        Accelerate's `unwrap_model` removes a DDP or DeepSpeed wrapper. FSDP2 has none: `fully_shard` changes the model
        in place, so this is the sharded model itself, whose parameters are gathered around `forward` only; its
        `fsdp_forward_methods` are registered to gather them too (`register_fsdp_forward_methods`, once per model).
        """
        policy = self.accelerator.unwrap_model(model)
        register_fsdp_forward_methods(policy)
        return policy

    def _encode_policy_images(self, policy, image_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the policy's frozen encoder on uncached pixels once per step: generation, the greedy baseline and the
        log-prob pass then all read the same `image_embeds` instead of encoding the pixels again."""
        if "pixel_values" not in image_inputs or not policy_caches_image_features(policy):
            return image_inputs
        return {"image_embeds": policy.encode_images(image_inputs["pixel_values"])}

    def _generate(self, model, policy, image_inputs: dict[str, torch.Tensor]):
        """Training captions: greedy (paper), sampled, or beam search; without gradients (two-pass step), or, in the
        one-pass step (`logprobs_from_generation`), with their tokens' log-probs through `model`'s forward (so that
        DDP sees the pass with gradients)."""
        decoding = self.args.train_decoding
        kwargs = {"max_new_tokens": self.args.max_completion_length}
        if decoding == "sample":
            kwargs.update(
                do_sample=True,
                temperature=self.args.temperature,
                top_k=self.args.top_k,
                top_p=self.args.top_p,
                num_return_sequences=self.args.num_generations,
            )
        elif decoding == "beam":
            kwargs.update(num_beams=self.args.num_beams)
        if self._one_pass:
            with self.accelerator.autocast():
                return model(**image_inputs, decode=True, **kwargs)
        return self._caption(policy, image_inputs, **kwargs)

    def _caption(self, policy, image_inputs: dict[str, torch.Tensor], **generation_kwargs):
        if self._static_cache:
            generation_kwargs["static_cache"] = True
        with policy.generation_mode(), self.accelerator.autocast():  # eval mode: the caption is the policy's own
            return policy.generate_captions(**image_inputs, **generation_kwargs)

    def _reward(self, texts: list[str], inputs: DiscriTuneBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards `[B * G]` of this process's captions (candidates: the images of their pool), and the rewards of
        every process's captions, gathered once for the statistics the baseline and the logs need."""
        with torch.no_grad():
            output = self.reward_model(texts, **inputs.retriever_inputs, **self._reward_kwargs())
        rewards = output.rewards.float()
        if not torch.isfinite(rewards).all():
            bad = [texts[i] for i in torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()[:3]]
            raise FloatingPointError(
                f"Non-finite reward at training step {self.state.global_step + 1} (captions: {bad}). Training "
                "stopped before this step's update, so no checkpoint holds it; the last saved checkpoint is intact. "
                "Check the retriever's embeddings, or lower the learning rate if the policy diverged."
            )
        global_rewards, _ = gather_rows(rewards)  # processes may hold different numbers of captions
        self._log_metric("reward", global_rewards.mean().item())
        self._log_metric("reward_std", global_rewards.std().item() if global_rewards.numel() > 1 else 0.0)
        self._log_metric("retrieval/accuracy", self._global_mean(output.accuracy.float()))
        self._log_metric("reward/num_candidates", float(output.logits.shape[1]))  # pool + mined hard negatives
        if getattr(output, "pool_sizes", None) is not None:  # a pool spanning processes is reported by each of them
            self._log_metric("pool/size", self._global_mean(output.pool_sizes))
            self._log_metric(
                "pool/count", self._global_sum(output.pool_sizes.numel()) / self._pools.processes_per_pool
            )
        return rewards, global_rewards

    def _reward_kwargs(self) -> dict[str, Any]:
        """The step and the candidate pools (see `discritune_trl.rewards.pools`), for every reward-model call."""
        return {
            "step": self.state.global_step,
            "pool_size": self._pools.pool_size,
            "processes_per_pool": self._pools.processes_per_pool,
        }

    def _advantages(self, rewards, global_rewards, policy, image_inputs, inputs) -> torch.Tensor:
        """`reward - baseline` for each caption, per `args.baseline`."""
        kind = self.args.baseline
        if kind == "mean":
            baseline = torch.full_like(rewards, self.running_mean.mean)
            self.running_mean.update(global_rewards.mean().item())
        elif kind == "greedy":
            greedy = self._caption(policy, image_inputs, max_new_tokens=self.args.max_completion_length)
            with torch.no_grad():
                baseline = self.reward_model(
                    greedy.texts, **inputs.retriever_inputs, **self._reward_kwargs()
                ).rewards.float()
            baseline = baseline.repeat_interleave(rewards.numel() // baseline.numel())
        elif kind == "loo":
            baseline = leave_one_out_baseline(rewards, self.args.num_generations)
        else:
            baseline = torch.zeros_like(rewards)
        advantages = scale_advantages(rewards - baseline, self.args.scale_rewards, self.args.num_generations)
        self._log_metric("baseline", self._global_mean(baseline))
        global_advantages, _ = gather_rows(advantages.detach().float())
        self._log_metric("advantage/mean", global_advantages.mean().item())
        self._log_metric("advantage/std", global_advantages.std().item() if global_advantages.numel() > 1 else 0.0)
        return advantages.detach()

    def _token_log_probs(self, model, captions, image_inputs) -> torch.Tensor:
        """`[B * G, T]` teacher-forced token log-probs with gradients, through `model`'s forward so that
        DDP/FSDP/DeepSpeed see the pass; the tokens' entropies from the same logits go to `captions.token_entropies`
        (for the `entropy` log) when the policy's `caption_log_probs` offers them."""
        with_entropy = _reports_entropy(self.accelerator.unwrap_model(model))
        token_log_probs = model(
            **image_inputs,
            caption_ids=captions.sequences,
            caption_mask=captions.caption_mask,
            log_prob_reduction="none",
            **({"return_entropy": True} if with_entropy else {}),
        )
        if with_entropy:
            token_log_probs, captions.token_entropies = token_log_probs
        return token_log_probs

    def _kl(self, policy, captions, image_inputs, token_log_probs) -> torch.Tensor:
        """Mean per-token KL to the initial policy (k3 estimator, always >= 0) on the generated tokens."""
        pass_inputs = dict(
            image_inputs, caption_ids=captions.sequences, caption_mask=captions.caption_mask, log_prob_reduction="none"
        )
        with torch.no_grad():
            if self.ref_model is not None:
                ref_log_probs = self.ref_model(**pass_inputs)
            else:  # PEFT: the reference is the base model with the adapters switched off
                with policy.disable_adapter():
                    ref_log_probs = policy(**pass_inputs)
        mask = captions.caption_mask.to(token_log_probs.dtype)
        delta = (ref_log_probs - token_log_probs) * mask
        per_token_kl = torch.exp(delta) - delta - 1
        kl = (per_token_kl * mask).sum() / mask.sum().clamp(min=1.0)
        self._log_metric("kl", self._global_mean(kl.detach().reshape(1)))
        return kl

    def _check_finite_loss(self, loss, inputs: DiscriTuneBatch, image_inputs, token_log_probs) -> None:
        """Stop before the update on a non-finite loss, naming the step and where the non-finite value came from
        (a NaN loss would write NaN weights into every later checkpoint while the log, which drops NaN, reads 0)."""
        if torch.isfinite(loss).all():
            return
        rows = inputs.image_index.tolist()

        def bad_rows(values: torch.Tensor | Mapping | None) -> list[int]:
            if isinstance(values, Mapping):  # a processor's BatchFeature (VLMPolicy): its per-image pixel_values
                values = values.get("pixel_values")
            if values is None or values.shape[0] != len(rows):  # tiles or patches not one row per image
                return []
            finite = torch.isfinite(values.float()).reshape(values.shape[0], -1).all(dim=1).tolist()
            return [rows[i] for i, ok in enumerate(finite) if not ok][:5]

        if bad_rows(inputs.policy_image_embeds):
            source = (
                f"the cached {POLICY_EMBEDS_COLUMN} of dataset row(s) {bad_rows(inputs.policy_image_embeds)}: "
                "recompute the cache (cache_frozen_embeddings) or drop those rows"
            )
        elif bad_rows(inputs.policy_pixel_values):
            source = f"the policy's pixel_values of dataset row(s) {bad_rows(inputs.policy_pixel_values)}: check those images"
        elif bad_rows(image_inputs.get("image_embeds")):
            source = (
                f"the policy's frozen image encoder (encode_images) on dataset row(s) "
                f"{bad_rows(image_inputs['image_embeds'])}: check those images and the encoder's weights and precision"
            )
        elif not torch.isfinite(token_log_probs).all():
            source = (
                "the policy's log-probabilities of its captions: its weights may have diverged (lower learning_rate)"
            )
        else:
            source = "the advantages or the KL term: check the rewards, the baseline and beta"
        raise FloatingPointError(
            f"Non-finite loss ({loss.item()}) at training step {self.state.global_step + 1}, from {source}. Training "
            "stopped before this step's update, so no checkpoint holds it; the last saved checkpoint is intact."
        )

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer's gradient norm, computed before every optimizer step; a non-finite one stops training before the
        update (except under fp16 loss scaling, whose scaler skips such steps and lowers the scale by design)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and self.accelerator.scaler is None and not math.isfinite(float(grad_norm)):
            raise FloatingPointError(
                f"Non-finite gradient norm ({float(grad_norm)}) at training step {self.state.global_step + 1}, with a "
                "finite loss: a backward pass through the policy overflowed. Training stopped before this step's "
                "update, so no checkpoint holds it; the last saved checkpoint is intact. Lower learning_rate, or "
                "train in fp32 or bf16."
            )
        return grad_norm

    # ------------------------------------------------------------------ logging

    def _global_mean(self, values: torch.Tensor) -> float:
        """Mean over every process's values; processes may hold different numbers (an image one of them could not
        decode), so the gather pads and trims rather than assuming equal sizes."""
        return gather_rows(values.detach().float().reshape(-1))[0].mean().item()

    def _global_sum(self, value: int | torch.Tensor) -> int:
        count = torch.as_tensor(value, device=self.accelerator.device).reshape(1).long()
        return int(gather_rows(count)[0].sum().item())

    def _log_metric(self, name: str, value: float) -> None:
        self._metrics[name].append(value)

    def _record_captions(self, captions, image_index: torch.Tensor, rewards, advantages) -> None:
        """Length statistics of the step's captions (GRPO's `completions/*` names) and, with `log_completions`, the
        captions to log: `num_completions_to_print` of them, gathered from every process."""
        lengths, _ = gather_rows(captions.caption_mask.sum(dim=1).float())  # [global B * G]
        clipped, _ = gather_rows((~captions.stopped).float())  # ran into max_completion_length without stopping
        self._log_metric("completions/mean_length", lengths.mean().item())
        self._log_metric("completions/min_length", lengths.min().item())
        self._log_metric("completions/max_length", lengths.max().item())
        self._log_metric("completions/clipped_ratio", clipped.mean().item())
        if captions.token_entropies is not None:  # mean per caption token, over every process's captions
            mask = captions.caption_mask.to(captions.token_entropies.device, torch.float32)
            totals = torch.stack([(captions.token_entropies.detach().float() * mask).sum(), mask.sum()])
            totals = gather_rows(totals.reshape(1, 2))[0].sum(dim=0)  # [2]: entropy summed, tokens
            self._log_metric("entropy", (totals[0] / totals[1].clamp(min=1.0)).item())
        if not self.args.log_completions:
            return
        repeats = len(captions.texts) // max(1, image_index.numel())
        indices = gather_objects(image_index.repeat_interleave(repeats).tolist())
        texts = gather_objects(list(captions.texts))
        rewards = gather_objects(rewards.float().tolist())
        advantages = gather_objects(advantages.float().tolist())
        count = len(texts) if self.args.num_completions_to_print is None else self.args.num_completions_to_print
        self._completions = [
            {"step": self.state.global_step + 1, "image_index": index, "caption": text, "reward": r, "advantage": a}
            for index, text, r, a in list(zip(indices, texts, rewards, advantages))[:count]
        ]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the DiscriTune metrics averaged since the last log, and log the step's completions."""
        self._tensorboard_under_output_dir()
        if "loss" in logs:
            logs.update({name: sum(values) / len(values) for name, values in self._metrics.items()})
            logs["data/unreadable_images"] = float(self._num_unreadable_images)
            logs["data/skipped_batches"] = float(self._num_skipped_batches)
            self._metrics.clear()
            self._log_completions()
        super().log(logs, start_time)

    def _tensorboard_under_output_dir(self) -> None:
        """Point transformers' TensorBoard callback at `<output_dir>/runs/<time>_<host>` before it opens its writer.

        The callback sets its folder in `on_train_begin` but opens its writer at the first log event: a log before
        training (an evaluation before `train()`, as the examples run) made it open `SummaryWriter(log_dir=None)`,
        i.e. `./runs` of the current directory. `TENSORBOARD_LOGGING_DIR`, when set, keeps precedence.
        """
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    def _log_completions(self) -> None:
        """TRL's `log_completions`: a console table, this run's JSONL file and a wandb / trackio table."""
        if not self._completions or not self.is_world_process_zero():
            return
        print_completions(self._completions, self.state.global_step)
        write_completions(self._completions, completions_path(self.args.output_dir, self.run_id))
        report_completions(self._completions, self.args.report_to or [])
        self._completions = []

    # ------------------------------------------------------------------ evaluation

    def caption_dataset(
        self, dataset: datasets.Dataset, num_beams: int | None = None, description: str = "Captioning"
    ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Caption every image of `dataset` (beam search, `eval_num_beams` by default) on all processes.

        A policy that declares `supports_beam_search = False` is decoded greedily instead, with one warning.

        Returns:
            `(captions, text_embeds [N, D], image_embeds [N, D])` in dataset order, the embeddings from the
            reward model's retriever, gathered from every process. Rows whose image cannot be read are left out
            (`evaluate()` reports how many).
        """
        return self._caption_dataset(dataset, num_beams, description)[:3]

    def _caption_dataset(self, dataset, num_beams: int | None = None, description: str = "Captioning"):
        """`caption_dataset`, plus the number of rows left out because their image could not be read."""
        unreadable = self._unreadable_in_cache.get(id(dataset), 0)
        dataset = _prepare_dataset(dataset, self.args.image_column, "dataset")
        dataloader = self.get_eval_dataloader(dataset)
        policy = self._unwrap_policy(self.model)
        num_beams = self.args.eval_num_beams if num_beams is None else num_beams
        if num_beams > 1 and not policy.supports_beam_search:
            if not self._warned_greedy_evaluation:
                logger.warning(
                    "%s declares supports_beam_search=False: captioning with greedy decoding instead of num_beams=%d "
                    "(eval_num_beams).",
                    type(policy).__name__,
                    num_beams,
                )
                self._warned_greedy_evaluation = True
            num_beams = 1
        indices, texts, text_embeds, image_embeds = [], [], [], []
        progress = tqdm(
            dataloader, desc=description, disable=self.args.disable_tqdm or not self.is_local_process_zero()
        )
        for batch in progress:
            batch = self._prepare_inputs(batch)
            unreadable += self._global_sum(batch.num_unreadable_images)
            if batch.num_images == 0:  # nothing readable here; still take part in the other processes' gathers
                if self.accelerator.num_processes == 1:
                    continue
                captions = CaptionOutput(texts=[])
                local_text = local_image = torch.zeros(
                    0, self.reward_model.retriever.embed_dim, device=self.accelerator.device
                )
            else:
                captions = self._caption(
                    policy, batch.policy_inputs, num_beams=num_beams, max_new_tokens=self.args.max_completion_length
                )
                with torch.no_grad():
                    local_text = self.reward_model.retriever.encode_texts(captions.texts).float()
                    local_image = self._retriever_image_embeds(batch).float()
            text_embeds.append(gather_rows(local_text)[0])
            image_embeds.append(gather_rows(local_image)[0])
            # Processes may hold different numbers of rows (unreadable images are dropped), so the gathers pad and
            # trim; rows that Accelerate repeated to even out the last batch are dropped by index below.
            indices.append(gather_rows(batch.image_index.to(self.accelerator.device))[0])
            texts.extend(gather_objects(captions.texts))
        indices = torch.cat(indices).cpu()
        order = indices.argsort(stable=True)  # processes interleave batches: back to dataset order
        # A stream split over processes pads its short last batch with rows read before: keep each image once.
        ordered = indices[order]
        order = order[torch.cat([torch.tensor([True]), ordered[1:] != ordered[:-1]])]
        texts = [texts[i] for i in order.tolist()]
        return texts, torch.cat(text_embeds)[order], torch.cat(image_embeds)[order], unreadable

    def _prepare_inputs(self, inputs: DiscriTuneBatch | Mapping[str, Any]) -> DiscriTuneBatch:
        """The batch on the device; a custom `data_collator`'s dict of `DiscriTuneBatch` fields becomes one."""
        if isinstance(inputs, Mapping) and not isinstance(inputs, DiscriTuneBatch):
            inputs = DiscriTuneBatch(inputs)
        return super()._prepare_inputs(inputs)

    def get_eval_dataloader(self, eval_dataset=None):
        """Batches of every evaluation image: `dataloader_drop_last` (on by default here) drops the short last
        batch in training only."""
        if eval_dataset is None and isinstance(self.eval_dataset, datasets.IterableDataset):
            eval_dataset = self.eval_dataset
        if isinstance(eval_dataset, datasets.IterableDataset):
            eval_dataset = self._split_by_batch(eval_dataset)
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def get_train_dataloader(self):
        """`Trainer.get_train_dataloader`, with a stream of several files split by batch (see `_split_by_batch`)."""
        stream = self.train_dataset
        self.train_dataset = self._split_by_batch(stream)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = stream

    def _split_by_batch(self, dataset):
        """A stream of several files (e.g. WebDataset shards) as one stream split by batch across processes.

        Accelerate would give each process whole files, and files of different lengths (img2dataset shards hold
        different numbers of images) would leave one process without batches while the others still step, which
        breaks the collective calls of the step. Split by batch, every process reads the stream's bytes, decodes
        only its own images (images are decoded in the collator) and takes the same number of steps.
        """
        if (
            isinstance(dataset, datasets.IterableDataset)
            and self.accelerator.num_processes > 1
            and dataset.n_shards > 1
            and not self.args.accelerator_config.dispatch_batches
        ):
            return _StreamSplitByBatch(dataset)
        return dataset

    def _retriever_image_embeds(self, batch: DiscriTuneBatch) -> torch.Tensor:
        """`[B, D]` image embeddings of the (first) retriever, cached or computed from pixels."""
        inputs = batch.retriever_inputs
        embeds = inputs.get("image_embeds")
        if embeds is None:
            embeds = self.reward_model.encode_images(inputs["pixel_values"])
        return embeds[0] if isinstance(embeds, (list, tuple)) else embeds

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Caption `eval_dataset` with beam search and report retrieval P@1 among `eval_num_candidates`
        candidates (the target and random evaluation images drawn with `eval_seed`: the paper's protocol).

        A dict of datasets (e.g. `{"in_domain": ..., "shifted": ...}`, the paper's cross-domain evaluation) is
        evaluated set by set, each set's metrics prefixed with its name (`eval_shifted_p_at_1`). With
        `eval_report_greedy`, greedy captions are evaluated too, under `<prefix>_greedy_*` (`eval_greedy_p_at_1`).
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset: pass one here or to the trainer.")
        if isinstance(dataset, str):  # Trainer names one set of a dict of evaluation datasets
            dataset = self.eval_dataset[dataset]
        if isinstance(dataset, dict):
            metrics = {}
            for name, subset in dataset.items():
                metrics.update(self.evaluate(subset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start_time = time.time()
        texts, text_embeds, image_embeds, unreadable = self._caption_dataset(dataset, description="Evaluating")
        metrics = self._retrieval_metrics(texts, text_embeds, image_embeds, metric_key_prefix)
        metrics[f"{metric_key_prefix}_unreadable_images"] = float(unreadable)  # rows left out: not decodable
        if self.args.eval_report_greedy:  # the training decoding, beside the evaluation's beam search
            greedy = self.caption_dataset(dataset, num_beams=1, description="Evaluating (greedy)")
            metrics.update(self._retrieval_metrics(*greedy, f"{metric_key_prefix}_greedy"))
        # Trainer's speed metrics, over the whole evaluation of this set (greedy pass included): images evaluated,
        # and batches of eval_batch_size on every process.
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(
            speed_metrics(
                metric_key_prefix,
                start_time,
                num_samples=len(texts),
                num_steps=math.ceil(len(texts) / total_batch_size),
            )
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _retrieval_metrics(self, texts, text_embeds, image_embeds, metric_key_prefix: str) -> dict[str, float]:
        """P@1 among `eval_num_candidates` candidates and caption statistics, named `<metric_key_prefix>_*`."""
        num_candidates = usable_num_candidates(
            self.args.eval_num_candidates, len(texts), name="eval_num_candidates", where=metric_key_prefix
        )
        p_at_1 = precision_at_1(text_embeds, image_embeds, num_candidates=num_candidates, seed=self.args.eval_seed)
        return {
            f"{metric_key_prefix}_p_at_1": 100.0 * p_at_1,
            f"{metric_key_prefix}_num_candidates": float(num_candidates),
            f"{metric_key_prefix}_caption_mean_words": sum(len(t.split()) for t in texts) / max(1, len(texts)),
            f"{metric_key_prefix}_empty_captions": float(sum(not t.strip() for t in texts)),
        }

    # ------------------------------------------------------------------ checkpoints and the Hub

    @property
    def running_mean(self) -> RunningMeanBaseline:
        """The running-mean baseline (`baseline="mean"`), a stateful callback saved with every checkpoint."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunningMeanBaseline))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, resuming the running-mean baseline too, from a checkpoint checked before any change.

        `resume_from_checkpoint=True` picks the newest *complete* checkpoint of `output_dir`, skipping (with a
        warning naming it) one cut off while being saved. The checkpoint's files, architecture and baseline state are
        all read before the trainer changes anything: a refused checkpoint leaves the trainer as it was.
        """
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = last_complete_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete checkpoint-N folder: "
                    "start without resume_from_checkpoint, or pass the path of a checkpoint."
                )
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = os.fspath(checkpoint)
            self._restore_baseline(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)

    def _restore_baseline(self, checkpoint: str) -> None:
        """Validate `checkpoint` (files, architecture, baseline state), then load its running-mean baseline."""
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise ValueError(f"Cannot resume from {checkpoint}: {problem}. Pass a complete checkpoint folder.")
        check_architecture(checkpoint, self.accelerator.unwrap_model(self.model))
        state = read_baseline_state(checkpoint, RunningMeanBaseline.__name__)
        if self.args.reset_baseline_on_resume:
            logger.warning("reset_baseline_on_resume=True: the running-mean baseline restarts at 0 at %s.", checkpoint)
            state = {"mean": 0.0, "count": 0}
        elif state is None and self.args.baseline == "mean":
            raise ValueError(
                f"{checkpoint} holds no running-mean baseline state (trainer_state.json has no "
                "stateful_callbacks['RunningMeanBaseline']), so the run would not resume exactly. Pass "
                "reset_baseline_on_resume=True (--reset_baseline_on_resume) to restart the baseline at 0, or resume "
                "from a checkpoint written by DiscriTuneTrainer."
            )
        if state is not None:
            self.running_mean.load_state_dict(state)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, **kwargs) -> None:
        """Write `README.md` in `output_dir`: base model, retriever, data, hyper-parameters, metrics, training
        curves, framework versions, citation. `dataset_name` (kept for later cards) is reported as given."""
        if dataset_name is not None:
            self.dataset_name = dataset_name
        if not self.is_world_process_zero():
            return
        write_model_card(self, model_name=model_name, tags=self._tag_names)

    def save_model(
        self, output_dir: str | None = None, _internal_call: bool = False, dataset_name: str | None = None
    ) -> None:
        """`Trainer.save_model`, plus the model card; `dataset_name` (e.g. the `--dataset_name` the user gave) is
        what the card reports as the training data, and is kept for the checkpoints' and `push_to_hub`'s cards."""
        if dataset_name is not None:
            self.dataset_name = dataset_name
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            write_model_card(self, output_dir=output_dir or self.args.output_dir, tags=self._tag_names)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # each checkpoint is a loadable policy: it gets its card too
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):
                write_model_card(self, output_dir=folder, tags=self._tag_names)

    # ------------------------------------------------------------------ the frozen-embedding cache

    def _cache_embeddings(self, dataset, name: str):
        """`dataset` with its frozen-encoder embeddings computed once (`args.cache_embeddings`), see
        `cache_frozen_embeddings`; datasets that already hold them are returned as they are."""
        if isinstance(dataset, dict):
            return {key: self._cache_embeddings(value, f"{name}[{key!r}]") for key, value in dataset.items()}
        if isinstance(dataset, datasets.IterableDataset):
            logger.info(
                "%s is a streaming dataset: its frozen embeddings are computed at every step (cache_embeddings "
                "needs a map-style dataset; cache_frozen_embeddings + save_to_disk make one that later runs reuse).",
                name,
            )
            return dataset
        if not isinstance(dataset, datasets.Dataset) or RETRIEVER_EMBEDS_COLUMN in dataset.column_names:
            return dataset
        cached = cache_frozen_embeddings(  # each process encodes its share, then all read the whole cache
            dataset,
            self._unwrap_policy(self.model),
            self.reward_model,
            image_column=self.args.image_column,
            batch_size=self.args.cache_batch_size,
            desc=f"Caching frozen image embeddings ({name})",
            cache_dir=self.args.embedding_cache_dir or os.path.join(self.args.output_dir, "embedding_cache"),
            num_workers=self.args.cache_num_workers,
            shard_size=self.args.cache_shard_size,
            process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes,
        )
        self._unreadable_in_cache[id(cached)] = len(dataset) - len(cached)  # reported by evaluate()
        if name == "train_dataset":  # unreadable images were dropped while caching; count them once
            self._num_unreadable_images += len(dataset) - len(cached)
        return cached

    # ------------------------------------------------------------------ checks

    def _check_best_model_metric(self) -> None:
        """`metric_for_best_model` must name a metric `evaluate()` reports, before any training is spent."""
        metric = self.args.metric_for_best_model
        if not self.args.load_best_model_at_end or metric is None or not isinstance(self.eval_dataset, dict):
            return
        names = [f"{name}_p_at_1" for name in self.eval_dataset]
        if self.args.eval_report_greedy:
            names += [f"{name}_greedy_p_at_1" for name in self.eval_dataset]
        if metric.removeprefix("eval_") not in names:
            raise ValueError(
                f"metric_for_best_model={metric!r}, but with several evaluation datasets evaluate() reports "
                f"{names}: pick one of those."
            )

    def _use_one_pass_step(self) -> bool:
        """Whether the step takes the log-probs from the decoding pass (`args.logprobs_from_generation`): `"true"`
        where it applies (else a `ValueError` naming what stands in the way), `"false"` never, `"auto"` where it
        applies and measured faster on this device and precision (`ONE_PASS_MEASURED_FASTER`)."""
        setting = self.args.logprobs_from_generation
        if setting == "false":
            return False
        policy = self.accelerator.unwrap_model(self.model)
        obstacles = one_pass_obstacles(policy, self.args)
        if setting == "true":
            if obstacles:
                raise ValueError(f"logprobs_from_generation='true' cannot apply: {'; '.join(obstacles)}.")
            logger.info(
                "One-pass step: caption log-probs are taken from the decoding pass (logprobs_from_generation)."
            )
            return True
        precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
        faster = ONE_PASS_MEASURED_FASTER.get((self.accelerator.device.type, precision), False)
        logger.info(
            "logprobs_from_generation='auto': %s step on %s in %s%s.",
            "one-pass" if faster and not obstacles else "two-pass",
            self.accelerator.device.type,
            precision,
            f" ({'; '.join(obstacles)})"
            if obstacles
            else ""
            if faster
            else " (the one-pass step was not measured faster)",
        )
        return faster and not obstacles

    def _use_static_cache(self) -> bool:
        """Whether captions decoded without gradients use a static KV cache (`args.static_cache_decoding`)."""
        setting = self.args.static_cache_decoding
        policy = self.accelerator.unwrap_model(self.model)
        supported = getattr(policy, "supports_static_cache", False)
        if setting == "true" and not supported:
            raise ValueError(
                f"static_cache_decoding='true', but {type(policy).__name__} declares supports_static_cache=False "
                "(its generate_captions takes no static_cache argument); set static_cache_decoding='false'."
            )
        if setting == "auto":
            precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
            return supported and STATIC_CACHE_MEASURED_FASTER.get((self.accelerator.device.type, precision), False)
        return setting == "true"

    def _check_pools(self) -> PoolLayout:
        """The candidate pools of a training step (`args.pool_size`), refused here when they cannot be formed or
        leave no distractor, with a warning when they hold fewer images than `pool_size`."""
        args, num_processes = self.args, self.accelerator.num_processes
        pools = pool_layout(args.pool_size, args.per_device_train_batch_size, num_processes)
        has_bank = getattr(self.reward_model, "num_hard_negatives", 0) > 0 or self._bank_from_cache
        if pools.images_per_pool < 2 and not has_bank:
            raise ValueError(
                f"per_device_train_batch_size={args.per_device_train_batch_size} on {num_processes} process(es) "
                f"(pool_size={args.pool_size}: pools of {pools.images_per_pool} image) leaves no in-batch "
                "distractors; use pools of >= 2 images or give the reward model a hard-negative bank with "
                "num_hard_negatives > 0."
            )
        if pools.processes_per_pool > 1 and not getattr(self.reward_model, "gather_across_processes", True):
            raise ValueError(
                f"pool_size={args.pool_size} makes each pool span {pools.processes_per_pool} processes, but the "
                "reward model was built with gather_across_processes=False; build it with "
                "gather_across_processes=True, or set per_device_train_batch_size to a multiple of pool_size."
            )
        accumulation = args.gradient_accumulation_steps
        micro_batch = f"{args.per_device_train_batch_size} image(s) per device x {num_processes} process(es)"
        if args.pool_size != -1 and pools.images_per_pool < args.pool_size:
            logger.warning(
                "pool_size=%d, but the global batch (%s) holds %d images: it is one candidate pool, so each caption "
                "competes with %d in-batch distractors, not the paper's %d.%s Raise per_device_train_batch_size (or "
                "add mined distractors with num_hard_negatives) to keep the task as hard, or set pool_size=%d.",
                args.pool_size,
                micro_batch,
                pools.images_per_pool,
                pools.images_per_pool - 1,
                args.pool_size - 1,
                f" gradient_accumulation_steps={accumulation} does not help: each micro-batch forms its own pools."
                if accumulation > 1
                else "",
                pools.images_per_pool,
            )
        elif args.pool_size == -1 and accumulation > 1:
            logger.warning(
                "pool_size=-1 with gradient_accumulation_steps=%d: each micro-batch (%s) forms its own global pool, "
                "so a caption competes with %d in-batch distractors, not the %d of the accumulated batch.",
                accumulation,
                micro_batch,
                pools.images_per_pool - 1,
                pools.images_per_pool * accumulation - 1,
            )
        logger.info(
            "Candidate pools: %d pool(s) of %d images per step%s.",
            pools.num_pools,
            pools.images_per_pool,
            "" if pools.processes_per_pool == 1 else f", each over {pools.processes_per_pool} processes",
        )
        return pools


def cpu_emulates_bf16() -> bool:
    """Whether this x86 CPU lacks bf16 matrix instructions (AVX512-BF16 and AMX), so that torch emulates bf16 matrix
    products in software. False where it cannot tell (other architectures, a torch without these checks)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks) or not getattr(torch.cpu, "_is_avx2_supported", lambda: False)():
        return False  # not an x86 CPU torch can inspect
    return not any(check() for check in checks)


# (device type, precision) -> whether the one-pass step (log-probs from the decoding pass) measured faster than the
# two-pass step there, with `benchmarks/throughput.py` (figures in docs/throughput.md). Unlisted: two-pass.
# CPU fp32, full size: 1.9x the two-pass step's time at batch 16; at batch 100, 2x its wall time (8 GiB more memory).
ONE_PASS_MEASURED_FASTER: dict[tuple[str, str], bool] = {("cpu", "fp32"): False}
# The same for decoding with a static KV cache (compiled by `generate` on CUDA): not measured faster anywhere yet.
STATIC_CACHE_MEASURED_FASTER: dict[tuple[str, str], bool] = {}


def one_pass_obstacles(policy: nn.Module, args: DiscriTuneConfig) -> list[str]:
    """What keeps the one-pass step (`logprobs_from_generation`) from giving the two-pass step's loss and gradients
    for this policy and config, each with its fix; empty when it applies."""
    obstacles = []
    if args.train_decoding == "beam":
        obstacles.append("train_decoding='beam' keeps the two-pass step (use 'greedy' or 'sample')")
    if not getattr(policy, "supports_log_probs_from_generation", False):
        obstacles.append(
            f"{type(policy).__name__} does not implement generate_with_log_probs "
            "(supports_log_probs_from_generation=False)"
        )
    dropout = [
        name
        for name, module in policy.named_modules()
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
    ]
    if dropout:
        obstacles.append(
            f"dropout is active in {dropout[:3]}{'...' if len(dropout) > 3 else ''} (captions must be decoded without "
            "it: set disable_dropout=True)"
        )
    # transformers renamed `is_gradient_checkpointing` to `is_activation_checkpointing` (the old name warns).
    checkpointing = "is_activation_checkpointing" if hasattr(type(policy), "is_activation_checkpointing") else None
    if args.gradient_checkpointing or getattr(policy, checkpointing or "is_gradient_checkpointing", False):
        obstacles.append("gradient checkpointing recomputes without the KV cache (set gradient_checkpointing=False)")
    return obstacles


def _check_train_size(dataset, args: DiscriTuneConfig) -> None:
    """A training set smaller than one batch would train 0 steps with `dataloader_drop_last`: refuse it."""
    batch_size = args.per_device_train_batch_size
    streaming = isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset))
    if dataset is None or not args.dataloader_drop_last or streaming or not hasattr(dataset, "__len__"):
        return
    if len(dataset) < batch_size:
        raise ValueError(
            f"train_dataset has {len(dataset)} readable image(s), fewer than per_device_train_batch_size={batch_size}: "
            "with dataloader_drop_last=True its only batch would be dropped and training would run 0 steps. Use "
            f"per_device_train_batch_size <= {len(dataset)}, more images, or dataloader_drop_last=False."
        )


def _as_policy(model: Any) -> nn.Module:
    """The captioner to train: a saved policy's folder or Hub id is loaded with `load_policy`."""
    return load_policy(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model


def _as_reward_model(reward_model: nn.Module, args: DiscriTuneConfig, train_dataset) -> tuple[nn.Module, bool]:
    """`(reward model, whether its hard-negative bank is still to come from the frozen-embedding cache)`."""
    is_retrievers = isinstance(reward_model, (list, tuple)) and all(isinstance(r, Retriever) for r in reward_model)
    if isinstance(reward_model, Retriever) or is_retrievers:
        bank_from_cache = (
            args.num_hard_negatives > 0 and args.cache_embeddings and isinstance(train_dataset, datasets.Dataset)
        )
        built = build_reward_model(
            reward_model, args, train_dataset=train_dataset, defer_hard_negative_bank=bank_from_cache
        )
        return built, bank_from_cache
    if not isinstance(reward_model, nn.Module):
        raise TypeError(
            f"reward_model must be a DiscriminativeRewardModel or a Retriever, got {_describe(reward_model)}. "
            "DiscriTune's reward is a retriever's judgement of each caption among candidate images, not a function of "
            "the text alone: wrap your retriever (a Retriever subclass), or subclass DiscriminativeRewardModel and "
            "override compute_rewards for a new reward (docs/rewards.md)."
        )
    check_reward_model_matches(reward_model, args)
    return reward_model, False


def _cached_retriever_embeds(dataset: datasets.Dataset) -> torch.Tensor | list[torch.Tensor]:
    """`[N, D]` retriever embeddings of a cached dataset (one tensor per retriever with several)."""
    rows = dataset.with_format(None)[RETRIEVER_EMBEDS_COLUMN]
    if rows and isinstance(rows[0][0], list):  # one embedding per retriever
        return [torch.tensor([row[index] for row in rows], dtype=torch.float32) for index in range(len(rows[0]))]
    return torch.tensor(rows, dtype=torch.float32)


def _check_policy(model: nn.Module) -> None:
    """The model implements `CaptioningPolicy`, and its tied weights will survive `save_model` (checked now, not
    after training)."""
    policy = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(policy, CaptioningPolicy):
        raise TypeError(
            f"model is a {type(policy).__name__}; DiscriTuneTrainer trains a CaptioningPolicy (ClipCapPolicy, "
            "BlipPolicy, HFCaptionerPolicy, or your own: see docs/custom_captioner.md)."
        )
    if isinstance(policy, nn.Module):
        policy.check_tied_weights()


class _StreamSplitByBatch(torch.utils.data.IterableDataset):
    """A `datasets.IterableDataset` that Accelerate shards by batch (`IterableDatasetShard`), not by file."""

    def __init__(self, dataset: datasets.IterableDataset):
        self.dataset = dataset

    def __iter__(self):
        return iter(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def _reports_entropy(policy: nn.Module) -> bool:
    """Whether the policy's `caption_log_probs` can return its tokens' entropies (`return_entropy`): the built-in
    policies do; a custom one that overrides the method without that argument is not asked (no `entropy` log)."""
    policy = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return "return_entropy" in inspect.signature(policy.caption_log_probs).parameters


def _frozen_reference(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference.eval()


def _prepare_dataset(dataset, image_column: str, name: str):
    """Check the image column, read images lazily (so broken files are skipped, not fatal) and add row indices.

    Map-style and streaming (`datasets.IterableDataset`) datasets alike; a streaming dataset whose columns are not
    known until it is read is checked by the collator instead. A list of PIL images becomes a `datasets.Dataset`;
    a dict of datasets (several evaluation sets) is prepared set by set.
    """
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)) and name == "train_dataset":
        raise TypeError(
            f"train_dataset is a {type(dataset).__name__} with splits {list(dataset)}; training reads one split: "
            f"pass train_dataset=dataset[{next(iter(dataset), 'train')!r}]."
        )
    if isinstance(dataset, dict) and name == "train_dataset":
        raise TypeError(
            f"train_dataset is a dict with keys {list(dataset)}; training reads one dataset: for a dict of columns, "
            "pass datasets.Dataset.from_dict(it)."
        )
    if isinstance(dataset, dict):
        return {key: _prepare_dataset(value, image_column, f"{name}[{key!r}]") for key, value in dataset.items()}
    if isinstance(dataset, list) and dataset and all(isinstance(image, Image.Image) for image in dataset):
        dataset = datasets.Dataset.from_dict({image_column: dataset}).cast_column(image_column, datasets.Image())
    is_hf_dataset = isinstance(dataset, (datasets.Dataset, datasets.IterableDataset))
    if dataset is None or (isinstance(dataset, torch.utils.data.Dataset) and not is_hf_dataset):
        return dataset  # a torch dataset of rows: read as it is
    if not is_hf_dataset:
        raise TypeError(
            f"{name} must be a datasets.Dataset (or IterableDataset) with an image column {image_column!r}, or a "
            f"list of PIL images; got {_describe(dataset)}. Load image files with "
            "discritune_trl.utils.data.load_image_dataset(path, split='train')."
        )
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError(f"{name} has no rows: pass a dataset with at least one image (was a split or filter empty?).")
    if isinstance(dataset, datasets.Dataset) and image_column in dataset.column_names:
        _check_some_image_decodes(dataset, image_column, name)
    columns = dataset.column_names
    if columns is not None and image_column not in columns:
        raise ValueError(
            f"{name} has no column {image_column!r}; its columns are {columns}. "
            "Set image_column (--image_column) to the one holding the images."
        )
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if columns is not None and INDEX_COLUMN in columns:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(lambda row, index: {INDEX_COLUMN: index}, with_indices=True)
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))


def _check_some_image_decodes(dataset: datasets.Dataset, image_column: str, name: str) -> None:
    """Refuse a dataset in which no image decodes (it would train or evaluate on nothing), showing the first error.
    Reads rows until one decodes: one row for a healthy dataset. Datasets holding both cached embeddings never need
    their images and are not read."""
    if POLICY_EMBEDS_COLUMN in dataset.column_names and RETRIEVER_EMBEDS_COLUMN in dataset.column_names:
        return
    first_error = None
    for index in range(len(dataset)):
        try:
            decode_image(dataset[index][image_column])
            return
        except Exception as error:  # as the collator: any decoding failure
            first_error = first_error or (index, error)
    index, error = first_error
    raise ValueError(
        f"{name}: none of its {len(dataset)} images can be decoded, so there is nothing to train or evaluate on. The "
        f"first error (row {index}): {type(error).__name__}: {error}. Check the {image_column!r} column (complete "
        "downloads? paths valid from where you run?)."
    )


def _describe(value: Any) -> str:
    """A short description of a wrong argument for error messages: its type, and its value when short."""
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {list(value.shape)}"
    if isinstance(value, (str, os.PathLike)):
        return f"the string {os.fspath(value)!r}"
    if isinstance(value, list):
        kinds = sorted({type(item).__name__ for item in value})
        return f"a list of {len(value)} item(s) of type {', '.join(kinds) or 'none'}"
    if callable(value) and not isinstance(value, nn.Module):
        return f"the function {getattr(value, '__name__', repr(value))!r}"
    return f"a {type(value).__name__}"
