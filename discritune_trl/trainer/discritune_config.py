"""`DiscriTuneConfig`: every DiscriTune knob as a documented `TrainingArguments` field, paper values as defaults."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..models.policy import MAX_CAPTION_TOKENS


BASELINES = ("mean", "greedy", "loo", "none")
TRAIN_DECODINGS = ("greedy", "sample", "beam")
REWARD_TYPES = ("log_prob", "accuracy", "cosine")
LOG_PROB_REDUCTIONS = ("mean", "sum")
LOGPROBS_FROM_GENERATION = ("auto", "true", "false")
SCALE_REWARDS = ("none", "group", "batch")

# Old field name -> new field name. The old names are accepted at construction (and as command-line flags) with a
# FutureWarning, and removed in a later 0.x release.
DEPRECATED_FIELDS = {
    "kl_coef": "beta",
    "max_new_tokens": "max_completion_length",
    "whiten_advantages": "scale_rewards",
    "num_sample_captions_to_log": "num_completions_to_print",
}


@dataclass
class DiscriTuneConfig(TrainingArguments):
    r"""
    Configuration class for [`DiscriTuneTrainer`].

    Only the parameters specific to DiscriTune are listed here; see [`~transformers.TrainingArguments`] for the rest.
    Defaults reproduce the paper (Section 4.1 and Appendix B of Dessì et al., "Cross-Domain Image Captioning with
    Discriminative Finetuning", CVPR 2023): Adam at a constant learning rate of 1e-7, batches of 100 images with
    in-batch distractors, greedy decoding for training, beam search with 5 beams for evaluation, at most 40 new tokens
    or the first full stop, a running-mean baseline and the log-probability reward. Using
    [`~transformers.HfArgumentParser`] every field becomes a command-line flag.

    Defaults that differ from `TrainingArguments`: `learning_rate=1e-7`, `lr_scheduler_type="constant"`,
    `optim="adamw_torch_fused"` (Adam, as `weight_decay` stays 0; the fused kernel runs on CPU and GPU),
    `per_device_train_batch_size=100`, `per_device_eval_batch_size=100`, `remove_unused_columns=False`,
    `logging_steps=10`, `ddp_find_unused_parameters=False`. `max_grad_norm=0.0`: no gradient clipping, as the paper
    and its public code (Trainer's 1.0 changed training, and on the embedded world it neither helped nor prevented
    a collapse: `benchmarks/world_ablations.md`); pass `--max_grad_norm 1.0` to clip.

    Parameters:
        > Parameters that control the data

        image_column (`str`, *optional*, defaults to `"image"`):
            Dataset column holding the images (a `datasets.Image` feature, PIL images or paths).
        cache_embeddings (`bool`, *optional*, defaults to `True`):
            Compute the frozen encoders' image embeddings (the retriever's, and the captioner's when its encoder is
            frozen) once per image before training, with `cache_frozen_embeddings`, and reuse them at every epoch
            instead of re-encoding the images at every step. Same results in fp32; under bf16/fp16 the cached
            embeddings are the models' own-precision outputs rather than autocast ones. Costs one pass over
            `train_dataset` and `eval_dataset` when the trainer is built, and memory or disk for the embeddings
            (ClipCap with a CLIP ViT-B/32 retriever: 4 KB per image; a frozen BLIP ViT-B encoder's patch features:
            1.8 MB per image, so switch it off for large BLIP datasets). Datasets that already hold the cached
            columns (e.g. saved with `save_to_disk` after a first run) are used as they are.
        cache_batch_size (`int`, *optional*, defaults to `64`):
            Images per encoder batch while caching.
        cache_num_workers (`int`, *optional*):
            Worker processes decoding and preprocessing images during the cache pass (each process of a
            multi-process run has its own; at most one per batch of its share), so JPEG decoding does not starve the
            encoders. `0` decodes in the training process. Defaults to 4, or fewer where the machine has fewer CPU
            cores available to this process (`os.sched_getaffinity`), so that the pass never asks for more workers
            than cores; a value given is used as given.
        cache_shard_size (`int`, *optional*, defaults to `10000`):
            Images per cache shard: the cache pass is split into shards of this many consecutive images, divided
            among the processes (each encodes only its contiguous share) and saved one by one, so a killed pass
            restarts without redoing finished shards.
        embedding_cache_dir (`str`, *optional*):
            Where the cache shards are saved, keyed by the dataset and the frozen weights (a later run with the same
            data and encoders reuses them). Every process must be able to read it: on several machines, a shared
            filesystem. Defaults to `<output_dir>/embedding_cache`.

        > Parameters that control generation

        max_completion_length (`int`, *optional*, defaults to `40`):
            Maximum number of caption tokens (TRL's name; formerly `max_new_tokens`). Generation also stops at the
            first full stop or EOS. At most 75, the number of tokens CLIP reads.
        train_decoding (`str`, *optional*, defaults to `"greedy"`):
            How training captions are decoded: `"greedy"` (paper), `"sample"` (with `temperature`, `top_k`,
            `top_p`), or `"beam"` (`num_beams` beams, the paper's Table 8 setting for the greedy baseline).
        num_generations (`int`, *optional*, defaults to `1`):
            Captions generated per training image. More than one needs `train_decoding="sample"` (greedy captions
            would be identical); `baseline="loo"` needs at least two.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature when `train_decoding="sample"`.
        top_k (`int`, *optional*, defaults to `0`):
            Top-k filtering when sampling; `0` disables it.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus filtering when sampling; `1.0` disables it.
        num_beams (`int`, *optional*, defaults to `5`):
            Beams for `train_decoding="beam"`.
        eval_num_beams (`int`, *optional*, defaults to `5`):
            Beams used to caption the evaluation set (paper: 5). A policy that declares `supports_beam_search = False`
            is evaluated greedily instead, with one warning.

        > Parameters that control the reward

        pool_size (`int`, *optional*, defaults to `100`):
            Images each caption is scored against (its *candidate pool*: the target and `pool_size - 1` in-batch
            distractors, plus `num_hard_negatives` mined ones; paper: 100). The global batch is split into pools of
            this many images, so more devices or a larger batch mean more pools per step, not a harder task: one
            device with `per_device_train_batch_size=1000` trains 10 pools of 100. Pools are formed within a
            device (no image embedding crosses processes) when `per_device_train_batch_size` is a multiple of
            `pool_size`, and over whole consecutive devices when `pool_size` is a multiple of it (4 x 25 images:
            one pool of 100); other combinations are refused when the trainer is built. A global batch of at most
            `pool_size` images is one pool (with a warning when smaller). `-1`: every image of the global batch is
            a candidate for every caption, however many processes (the behaviour before pools existed). See
            `docs/distributed.md`.
        reward_type (`str`, *optional*, defaults to `"log_prob"`):
            `"log_prob"`: log-softmax probability the retriever gives the target among the candidates (paper);
            `"accuracy"`: 1 if the target scores highest, else 0; `"cosine"`: cosine similarity of caption and target
            only (CLIPScore-like, not discriminative).
        num_hard_negatives (`int`, *optional*, defaults to `0`):
            Mined hard negatives appended to each target's candidates (Appendix D.2), mined among the training images
            (a map-style training set: a stream cannot be encoded up front).
        hard_negative_similarity_ceiling (`float`, *optional*, defaults to `0.8`):
            Bank images more similar than this to the target are treated as near-duplicates and skipped.

        These three build the reward model when the trainer is given retrievers (`build_reward_model`). A
        `DiscriminativeRewardModel` passed to the trainer keeps its own settings; then any of the three that differs
        from its default here (i.e. that the user set) must equal the reward model's, or the trainer raises.

        > Parameters that control the policy-gradient loss

        baseline (`str`, *optional*, defaults to `"mean"`):
            REINFORCE baseline: `"mean"` (running mean of past batch-mean rewards, paper), `"greedy"` (self-critical:
            the reward of the greedy caption of the same image; needs `train_decoding` `"sample"` or `"beam"`),
            `"loo"` (leave-one-out mean over the `num_generations` captions of the same image, as in RLOO), `"none"`.
        log_prob_reduction (`str`, *optional*, defaults to `"mean"`):
            How token log-probabilities make the caption's log-probability: `"mean"` (normalised by length, as the
            public DiscriTune implementation) or `"sum"` (the sequence log-probability of REINFORCE's derivation).
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient (TRL's name; formerly `kl_coef`): weight of a KL penalty to the frozen initial policy
            (per-token k3 estimator, as GRPO). `0` keeps no reference model.
        scale_rewards (`str` or `bool`, *optional*, defaults to `"none"`):
            Advantage scaling, TRL's `GRPOConfig.scale_rewards` values (formerly `whiten_advantages`, which only
            divided by the std): `"none"` / `False` (paper): `reward - baseline` as it is; `"batch"`: the advantages
            are centred on their mean over the global batch and divided by their standard deviation over it (+1e-4),
            as RLOO's `normalize_advantages` and GRPO's `"batch"`; `"group"` / `True`: centred and scaled within the
            `num_generations` captions of each image (needs `num_generations >= 2`).
        logprobs_from_generation (`str` or `bool`, *optional*, defaults to `"auto"`):
            Where the caption log-probabilities come from. `"true"`: the one-pass step, which decodes the training
            captions *with* gradients through the KV cache and takes their log-probabilities from that pass (as SCST
            implementations do), so the second, teacher-forced forward pass disappears; same loss and gradients
            (tested at fp32 tolerance), the graph of every decoding step held until the backward pass. Needs
            `train_decoding` `"greedy"` or `"sample"`, a policy with `supports_log_probs_from_generation` (ClipCap),
            no active dropout and no gradient checkpointing; otherwise the trainer raises. `"false"`: decode without
            gradients, then one teacher-forced pass (the two-pass step; beam-search training always uses it).
            `"auto"`: the one-pass step where it applies and was measured faster (see `docs/throughput.md`), else the
            two-pass step; the trainer logs which it uses. `True`/`False` are accepted for `"true"`/`"false"`.
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Switch off the policy's dropout, so that the teacher-forced log-probabilities are those of the policy
            that decoded the captions (generation always runs without dropout).
        reset_baseline_on_resume (`bool`, *optional*, defaults to `False`):
            When resuming from a checkpoint, restart the running-mean baseline at 0 instead of loading the one the
            checkpoint saved. Off, a checkpoint without a baseline state is refused with `baseline="mean"`, as the run
            would not resume exactly.

        > Parameters that control evaluation and logging

        eval_num_candidates (`int`, *optional*, defaults to `100`):
            Candidates per query for retrieval P@1 at evaluation: the target and `eval_num_candidates - 1` random
            evaluation images drawn with `eval_seed` (paper: 100).
        eval_seed (`int`, *optional*, defaults to `0`):
            Seed of the evaluation distractor draw, fixed so evaluations are comparable.
        log_completions (`bool`, *optional*, defaults to `False`):
            At each logging step, log `num_completions_to_print` training captions with their image's dataset index,
            reward and advantage: a table in the console, a JSONL file per run under `output_dir`
            (`completions/<run id>.jsonl`) and a table to wandb / trackio when they are in `report_to` (TRL's name).
        num_completions_to_print (`int` or `None`, *optional*, defaults to `4`):
            Captions logged per logging step when `log_completions` is on; `None` logs every caption of the step.
            (Formerly `num_sample_captions_to_log`, which also switched the logging on.)
        eval_report_greedy (`bool`, *optional*, defaults to `False`):
            `evaluate()` also captions the evaluation set greedily (the training decoding) and reports its P@1 as
            `<prefix>_greedy_p_at_1` beside the beam-search `<prefix>_p_at_1` (`eval_num_beams` beams), so that a
            gap between the two decodings shows. Costs one greedy captioning pass per evaluation.

        > Parameters that control the collapse alarm

        collapse_alarm (`bool`, *optional*, defaults to `True`):
            Watch the logged training metrics and warn, naming the step and the figures, when the policy collapses
            (`CollapseAlarmCallback`): when in-batch retrieval accuracy or the mean reward falls far below its
            running level (the best mean of `collapse_window` consecutive logs so far), or the mean caption length
            collapses. The alarms are kept in `trainer.collapse_alarm.alarms`.
        stop_on_collapse (`bool`, *optional*, defaults to `False`):
            Stop training at the first collapse alarm.
        collapse_window (`int`, *optional*, defaults to `5`):
            Logged values (every `logging_steps` steps) per running mean; no alarm before that many logs.
        collapse_accuracy_drop (`float`, *optional*, defaults to `0.2`):
            Alarm when in-batch retrieval accuracy (in [0, 1]) falls this far below its running level.
        collapse_reward_drop (`float`, *optional*, defaults to `1.0`):
            Alarm when the mean reward falls this many batch reward standard deviations (`reward_std`, averaged
            over the same window) below its running level.
        collapse_length_ratio (`float`, *optional*, defaults to `0.5`):
            Alarm when the mean caption length falls below this fraction of its running level.

        > Deprecated names

        `kl_coef`, `max_new_tokens`, `whiten_advantages` and `num_sample_captions_to_log` are still accepted (in
        Python and as flags) with a `FutureWarning`, and set `beta`, `max_completion_length`,
        `scale_rewards="batch"`/`"none"` and `log_completions` + `num_completions_to_print`; giving an old name and
        its new name different values is a `ValueError`. The config then holds the value under the new name only
        (the old attribute reads `None`).

        With `load_best_model_at_end=True` and no `metric_for_best_model`, the best checkpoint is the one with the
        highest `eval_p_at_1` (`metric_for_best_model="p_at_1"`).
    """

    # Defaults that differ from TrainingArguments: the paper's optimisation setting.
    learning_rate: float = field(default=1e-7, metadata={"help": "Adam learning rate (paper: 1e-7)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "Optimizer; with weight_decay=0 AdamW is the paper's Adam. One fused kernel, fastest on CPU and GPU."
        },
    )
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0 clips nothing (the paper)."}
    )
    per_device_train_batch_size: int = field(
        default=100, metadata={"help": "Images per device and step; split into candidate pools of pool_size images."}
    )
    per_device_eval_batch_size: int = field(default=100, metadata={"help": "Images per device when captioning."})
    dataloader_drop_last: bool = field(
        default=True,
        metadata={
            "help": "Drop the last, short training batch: its captions would face fewer distractors (a batch of one "
            "image, none). Evaluation always captions every image."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns: the collator picks the image column itself."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable policy parameter takes part in the log-prob pass."}
    )

    # > Data
    image_column: str = field(default="image", metadata={"help": "Dataset column holding the images."})
    cache_embeddings: bool = field(
        default=True, metadata={"help": "Encode images with the frozen encoders once, before training."}
    )
    cache_batch_size: int = field(default=64, metadata={"help": "Images per encoder batch while caching."})
    cache_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Workers decoding images during the cache pass, per process (0: none; default: 4, at most "
            "the available CPU cores)."
        },
    )
    cache_shard_size: int = field(
        default=10_000, metadata={"help": "Images per resumable cache shard (the pass is split among processes)."}
    )
    embedding_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the embedding cache, readable by every process. Default: <output_dir>/embedding_cache."
        },
    )

    # > Generation
    max_completion_length: int = field(default=40, metadata={"help": "Maximum caption tokens (<= 75)."})
    train_decoding: str = field(
        default="greedy", metadata={"help": "Training decoding: greedy | sample | beam.", "choices": TRAIN_DECODINGS}
    )
    num_generations: int = field(default=1, metadata={"help": "Captions generated per training image."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering when sampling (0: off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus filtering when sampling (1.0: off)."})
    num_beams: int = field(default=5, metadata={"help": "Beams for train_decoding='beam'."})
    eval_num_beams: int = field(default=5, metadata={"help": "Beams when captioning the evaluation set."})
    static_cache_decoding: str = field(
        default="auto",
        metadata={
            "help": "Decode with a static KV cache, compiled by generate on CUDA (true | false | auto: where "
            "measured faster).",
            "choices": LOGPROBS_FROM_GENERATION,
        },
    )

    # > Reward
    pool_size: int = field(
        default=100,
        metadata={"help": "Images per candidate pool (paper: 100); the global batch is split into pools. -1: all."},
    )
    reward_type: str = field(
        default="log_prob", metadata={"help": "log_prob | accuracy | cosine.", "choices": REWARD_TYPES}
    )
    num_hard_negatives: int = field(default=0, metadata={"help": "Mined hard negatives per target."})
    hard_negative_similarity_ceiling: float = field(
        default=0.8, metadata={"help": "Skip bank images more similar than this (near-duplicates)."}
    )

    # > Loss
    baseline: str = field(
        default="mean", metadata={"help": "REINFORCE baseline: mean | greedy | loo | none.", "choices": BASELINES}
    )
    log_prob_reduction: str = field(
        default="mean",
        metadata={"help": "Caption log-prob: mean (length-normalised) | sum.", "choices": LOG_PROB_REDUCTIONS},
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient: penalty weight to the frozen initial policy."})
    logprobs_from_generation: str = field(
        default="auto",
        metadata={
            "help": "Take the log-probs from the decoding pass (one pass, true), from a second teacher-forced pass "
            "(false), or whichever measured faster where the one pass applies (auto).",
            "choices": LOGPROBS_FROM_GENERATION,
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "Advantage scaling (TRL's values): none | batch (centre and scale over the global batch) | group "
            "(within each image's num_generations captions). True means group, False none."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Switch off the policy's dropout."})
    reset_baseline_on_resume: bool = field(
        default=False,
        metadata={"help": "On resume, restart the running-mean baseline at 0 (needed for a checkpoint without one)."},
    )

    # > Evaluation and logging
    eval_num_candidates: int = field(default=100, metadata={"help": "Candidates per query for eval P@1."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the eval distractor draw."})
    log_completions: bool = field(
        default=False, metadata={"help": "Log training captions with image index, reward and advantage."}
    )
    num_completions_to_print: int | None = field(
        default=4, metadata={"help": "Captions logged per logging step with log_completions (None: all)."}
    )

    eval_report_greedy: bool = field(
        default=False, metadata={"help": "evaluate() also reports greedy-decoding P@1 (<prefix>_greedy_p_at_1)."}
    )

    # > Collapse alarm
    collapse_alarm: bool = field(
        default=True, metadata={"help": "Warn when reward, retrieval accuracy or caption length collapses."}
    )
    stop_on_collapse: bool = field(default=False, metadata={"help": "Stop training at the first collapse alarm."})
    collapse_window: int = field(default=5, metadata={"help": "Logged values per running mean of the alarm."})
    collapse_accuracy_drop: float = field(
        default=0.2, metadata={"help": "Alarm when retrieval accuracy falls this far below its running level."}
    )
    collapse_reward_drop: float = field(
        default=1.0, metadata={"help": "Alarm when the mean reward falls this many reward stds below its level."}
    )
    collapse_length_ratio: float = field(
        default=0.5, metadata={"help": "Alarm when caption length falls below this fraction of its level."}
    )

    # > Deprecated names (TRL's names above replace them); each maps to its new field with a FutureWarning.
    kl_coef: float | None = field(default=None, metadata={"help": "Deprecated: use --beta."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Deprecated: use --max_completion_length."})
    whiten_advantages: bool | None = field(
        default=None, metadata={"help": "Deprecated: use --scale_rewards batch (which also centres)."}
    )
    num_sample_captions_to_log: int | None = field(
        default=None, metadata={"help": "Deprecated: use --log_completions --num_completions_to_print N."}
    )

    def __post_init__(self):
        self._map_deprecated_fields()
        if os.environ.get("WORLD_SIZE", "1") != "1" and not _has_accelerator():
            # Several processes on a machine without accelerator (`accelerate launch --multi_gpu --num_processes 2`
            # on CPUs): without this, Accelerate would see no device to distribute over and skip DDP.
            engine = next((name for name in _SHARDING_ENGINES if _env_flag(_SHARDING_ENGINES[name])), None)
            if engine is not None:
                raise ValueError(
                    f"accelerate launch asked for {engine} ({_SHARDING_ENGINES[engine]}=true), but this machine has "
                    f"no GPU: Accelerate would run the {os.environ['WORLD_SIZE']} CPU processes as plain DDP and "
                    f"ignore the {engine} settings. On CPUs use examples/accelerate_configs/cpu_2proc.yaml (DDP over "
                    "gloo); see docs/distributed.md."
                )
            self.use_cpu = True
        if self.use_cpu or not _has_accelerator():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator; torch warns on every loader
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            # Trainer's default, "loss", is not an evaluation metric here: evaluate() reports retrieval P@1.
            self.metric_for_best_model = "p_at_1"
        super().__post_init__()
        if self.accelerator_config.dispatch_batches is None:
            # Streaming datasets: every process reads its own batches. Batches dispatched from the main process
            # would be concatenated, which the per-batch count of unreadable images does not allow.
            self.accelerator_config.dispatch_batches = False
        self._check_choice("train_decoding", TRAIN_DECODINGS)
        self._check_choice("baseline", BASELINES)
        self._check_choice("reward_type", REWARD_TYPES)
        self._check_choice("log_prob_reduction", LOG_PROB_REDUCTIONS)
        for name in ("logprobs_from_generation", "static_cache_decoding"):
            if isinstance(getattr(self, name), bool):
                setattr(self, name, str(getattr(self, name)).lower())
            self._check_choice(name, LOGPROBS_FROM_GENERATION)
        if self.logprobs_from_generation == "true" and self.train_decoding == "beam":
            raise ValueError(
                "logprobs_from_generation='true' takes the log-probs from greedy or sampled decoding, but "
                "train_decoding='beam' (beam search re-ranks its hypotheses, so the decoding pass does not hold the "
                "chosen caption's log-probs); use logprobs_from_generation='false' or 'auto' (the two-pass step)."
            )
        self._check_choice("scale_rewards", SCALE_REWARDS)
        if not 1 <= self.max_completion_length <= MAX_CAPTION_TOKENS:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} must be between 1 and {MAX_CAPTION_TOKENS}: CLIP reads "
                "at most 75 caption tokens (paper: 40)."
            )
        if not self.learning_rate > 0:  # also NaN
            raise ValueError(
                f"learning_rate={self.learning_rate} must be > 0: the policy would not change (paper: 1e-7)."
            )
        if self.cache_batch_size < 1:
            raise ValueError(f"cache_batch_size={self.cache_batch_size} must be >= 1.")
        if self.cache_num_workers is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self.cache_num_workers = min(4, cores)
        if self.cache_num_workers < 0:
            raise ValueError(f"cache_num_workers={self.cache_num_workers} must be >= 0 (0: decode in this process).")
        if self.cache_shard_size < 1:
            raise ValueError(f"cache_shard_size={self.cache_shard_size} must be >= 1.")
        if self.num_generations < 1:
            raise ValueError(f"num_generations={self.num_generations} must be >= 1.")
        if self.num_generations > 1 and self.train_decoding != "sample":
            raise ValueError(
                f"num_generations={self.num_generations} with train_decoding={self.train_decoding!r} would repeat "
                "the same caption; set train_decoding='sample' or num_generations=1."
            )
        if self.baseline == "loo" and self.num_generations < 2:
            raise ValueError(
                "baseline='loo' averages the other captions of the same image and needs num_generations >= 2 "
                f"(got {self.num_generations}); set num_generations=2 or more with train_decoding='sample'."
            )
        if self.baseline == "greedy" and self.train_decoding == "greedy":
            raise ValueError(
                "baseline='greedy' (self-critical) compares each caption with the greedy one, which is the training "
                "caption itself under train_decoding='greedy'; use train_decoding='sample' or 'beam', or "
                "baseline='mean'."
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k).")
        if self.num_beams < 1 or self.eval_num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} and eval_num_beams={self.eval_num_beams} must be >= 1.")
        if self.pool_size != -1 and self.pool_size < 1:
            raise ValueError(
                f"pool_size={self.pool_size} must be >= 1 (images per candidate pool), or -1 for the whole global batch."
            )
        if self.num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives={self.num_hard_negatives} must be >= 0.")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta} must be >= 0.")
        if self.scale_rewards == "group" and self.num_generations < 2:
            raise ValueError(
                "scale_rewards='group' centres and scales the rewards of each image's num_generations captions and "
                f"needs num_generations >= 2 (got {self.num_generations}); use scale_rewards='batch' or raise "
                "num_generations (with train_decoding='sample')."
            )
        if self.num_completions_to_print is not None and self.num_completions_to_print < 0:
            raise ValueError(f"num_completions_to_print={self.num_completions_to_print} must be >= 0 or None.")
        if self.collapse_window < 1:
            raise ValueError(f"collapse_window={self.collapse_window} must be >= 1 logged value.")
        if not 0 < self.collapse_accuracy_drop <= 1:
            raise ValueError(f"collapse_accuracy_drop={self.collapse_accuracy_drop} must be in (0, 1].")
        if self.collapse_reward_drop <= 0:
            raise ValueError(f"collapse_reward_drop={self.collapse_reward_drop} must be > 0 (reward stds).")
        if not 0 < self.collapse_length_ratio < 1:
            raise ValueError(f"collapse_length_ratio={self.collapse_length_ratio} must be in (0, 1).")
        if self.eval_num_candidates < 2:
            raise ValueError(f"eval_num_candidates={self.eval_num_candidates} must be >= 2 (target + distractors).")

    def _map_deprecated_fields(self) -> None:
        """Map each deprecated name the user set onto its TRL name (a FutureWarning each); setting both, with
        different values, is an error naming both."""
        if isinstance(self.scale_rewards, bool) or self.scale_rewards in ("True", "False", "true", "false"):
            self.scale_rewards = "group" if str(self.scale_rewards).lower() == "true" else "none"
        defaults = {f.name: f.default for f in self.__dataclass_fields__.values()}
        for old, new in DEPRECATED_FIELDS.items():
            value = getattr(self, old)
            if value is None:
                continue
            if old == "whiten_advantages":
                mapped = {new: "batch" if value else "none"}
            elif old == "num_sample_captions_to_log":
                mapped = {"log_completions": value > 0, new: value}
            else:
                mapped = {new: value}
            warnings.warn(
                f"{old}={value!r} is deprecated and will be removed in a later 0.x release; use "
                + " and ".join(f"{name}={mapped_value!r}" for name, mapped_value in mapped.items())
                + " (TRL's names).",
                FutureWarning,
                stacklevel=3,
            )
            for name, mapped_value in mapped.items():
                current = getattr(self, name)
                if current != defaults[name] and current != mapped_value:
                    raise ValueError(f"{old}={value!r} (deprecated) and {name}={current!r} disagree; set only {name}.")
                setattr(self, name, mapped_value)
            setattr(self, old, None)  # the config holds each setting once, under its new name

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {choices}.")


# Accelerate's launcher marks these engines in the environment of every process it starts.
_SHARDING_ENGINES = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def _has_accelerator() -> bool:
    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or (torch.backends.mps.is_available())
    )
