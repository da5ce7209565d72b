"""Fine-tune a captioner with DiscriTune; with no arguments, on the embedded synthetic world (offline, minutes).

    accelerate launch examples/finetune_clipcap.py [--config recipe.yaml] [flags]

A thin wrapper around `discritune_trl.scripts.train` (also `discritune-trl train` and
`accelerate launch -m discritune_trl.scripts.train`); see that module and `--help` for the flags.
"""

from discritune_trl.scripts.train import main, parse_arguments


if __name__ == "__main__":
    main(*parse_arguments())
