"""TRL's names for TRL's concepts: the config fields, their deprecated aliases, advantage scaling, metric names."""

import warnings

import pytest
import torch

from discritune_trl import DiscriTuneConfig
from discritune_trl.trainer.baselines import scale_advantages


def config(tmp_path, **kwargs):
    return DiscriTuneConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


@pytest.mark.parametrize(
    "old, new",
    [
        (dict(kl_coef=0.2), dict(beta=0.2)),
        (dict(max_new_tokens=12), dict(max_completion_length=12)),
        (dict(whiten_advantages=True), dict(scale_rewards="batch")),
        (dict(whiten_advantages=False), dict(scale_rewards="none")),
        (dict(num_sample_captions_to_log=3), dict(log_completions=True, num_completions_to_print=3)),
        (dict(num_sample_captions_to_log=0), dict(log_completions=False, num_completions_to_print=0)),
    ],
    ids=str,
)
def test_old_names_warn_and_set_the_new_fields(tmp_path, old, new):
    (name,) = old
    with pytest.warns(FutureWarning, match=rf"{name}=.*deprecated.*{next(iter(new))}="):
        args = config(tmp_path, **old)
    assert {key: getattr(args, key) for key in new} == new
    assert getattr(args, name) is None  # the setting lives under its new name only
    with pytest.warns(FutureWarning):
        same = config(tmp_path, **old, **new)  # both, agreeing: fine
    assert {key: getattr(same, key) for key in new} == new


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(kl_coef=0.2, beta=0.1), ("kl_coef=0.2", "beta=0.1")),
        (dict(max_new_tokens=12, max_completion_length=20), ("max_new_tokens=12", "max_completion_length=20")),
        (
            dict(whiten_advantages=True, scale_rewards="group", num_generations=2, train_decoding="sample"),
            ("whiten_advantages=True", "scale_rewards='group'"),
        ),
    ],
)
def test_old_and_new_name_disagreeing_is_an_error_naming_both(tmp_path, kwargs, names):
    with pytest.warns(FutureWarning), pytest.raises(ValueError) as error:
        config(tmp_path, **kwargs)
    assert all(name in str(error.value) for name in names)


def test_new_names_do_not_warn_and_parse_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (args,) = HfArgumentParser(DiscriTuneConfig).parse_args_into_dataclasses(
            [
                "--output_dir",
                str(tmp_path),
                "--beta",
                "0.3",
                "--max_completion_length",
                "9",
                "--log_completions",
                "--num_completions_to_print",
                "2",
                "--scale_rewards",
                "batch",
                "--use_cpu",
                "--report_to",
                "none",
            ]
        )
    assert (args.beta, args.max_completion_length, args.log_completions, args.num_completions_to_print) == (
        0.3,
        9,
        True,
        2,
    )
    assert args.scale_rewards == "batch"
    with pytest.warns(FutureWarning, match="use beta=0.3"):
        (old,) = HfArgumentParser(DiscriTuneConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--kl_coef", "0.3", "--use_cpu", "--report_to", "none"]
        )
    assert old.beta == 0.3


@pytest.mark.parametrize("value, expected", [(True, "group"), (False, "none"), ("True", "group"), ("none", "none")])
def test_scale_rewards_takes_trl_booleans(tmp_path, value, expected):
    args = config(tmp_path, scale_rewards=value, num_generations=2, train_decoding="sample")
    assert args.scale_rewards == expected


def test_scale_rewards_refuses_unknown_values_and_group_without_groups(tmp_path):
    with pytest.raises(ValueError, match="scale_rewards='sometimes'"):
        config(tmp_path, scale_rewards="sometimes")
    with pytest.raises(ValueError, match="scale_rewards='group'.*num_generations >= 2"):
        config(tmp_path, scale_rewards="group")


def test_scale_advantages_centres_and_scales_like_trl():
    advantages = torch.tensor([1.0, 3.0, 2.0, 6.0])  # two images x two captions
    torch.testing.assert_close(scale_advantages(advantages, "none"), advantages)
    batch = scale_advantages(advantages, "batch")
    expected = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    torch.testing.assert_close(batch, expected)
    assert batch.mean().abs() < 1e-6  # centred (the old whiten_advantages only divided by the std)
    group = scale_advantages(advantages, "group", num_generations=2)
    grouped = advantages.view(2, 2)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1)
    torch.testing.assert_close(group, expected)
    torch.testing.assert_close(group.view(2, 2).sum(1), torch.zeros(2), atol=1e-6, rtol=0)
