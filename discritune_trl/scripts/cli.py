"""The `discritune-trl` command: `train`, `evaluate`, `caption`, `world`, `env`.

    discritune-trl train [--config recipe.yaml] [flags]   # no --dataset_name: the embedded world
    discritune-trl evaluate --model_name_or_path A B --dataset_name TEST --output_dir eval
    discritune-trl caption --model_name_or_path A --dataset_name ./photos --output_file captions.jsonl
    discritune-trl world build|info [--cache-dir DIR]
    discritune-trl env

`discritune-trl COMMAND --help` lists each command's flags. For several processes, launch the script module:
`accelerate launch -m discritune_trl.scripts.train ...`.
"""

from __future__ import annotations

import sys

from ..world.__main__ import main as world_main
from . import caption, env, evaluate, train


COMMANDS = {
    "train": "Fine-tune a captioner with DiscriTune (the embedded world when no --dataset_name is given).",
    "evaluate": "Evaluate captioners side by side: P@1, recall@k, BLEU/METEOR/ROUGE-L/CIDEr.",
    "caption": "Caption a folder or dataset of images into a JSONL or CSV file.",
    "world": "Build or inspect the embedded synthetic world.",
    "env": "Print the versions to paste into a bug report.",
}


def usage() -> str:
    lines = ["usage: discritune-trl {" + ",".join(COMMANDS) + "} ...", "", "commands:"]
    lines += [f"  {name:<9} {description}" for name, description in COMMANDS.items()]
    return "\n".join(lines + ["", "discritune-trl COMMAND --help shows a command's flags."])


def main(argv: list[str] | None = None) -> None:
    """Run `discritune-trl COMMAND ARGS...` (`argv`: the arguments after the program name)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, args = argv[0], argv[1:]
    prog = f"discritune-trl {command}"
    if command == "train":
        train.main(*train.parse_arguments(args, prog=prog))
    elif command == "evaluate":
        evaluate.main(*evaluate.parse_arguments(args, prog=prog))
    elif command == "caption":
        caption.main(*caption.parse_arguments(args, prog=prog))
    elif command == "world":
        world_main(args, prog=prog)
    elif command == "env":
        env.main(args)
    else:
        raise SystemExit(f"discritune-trl: unknown command {command!r}\n\n{usage()}")


if __name__ == "__main__":
    main()
