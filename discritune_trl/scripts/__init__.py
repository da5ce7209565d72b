"""The command-line scripts, shipped with the package: `discritune-trl train|evaluate|caption|world|env`.

Each script also runs on its own (`accelerate launch -m discritune_trl.scripts.train ...`); `examples/` holds thin
wrappers around them. The flags are one vocabulary everywhere: TRL's `ScriptArguments` and `ModelConfig` names
(`--model_name_or_path`, `--dataset_name`, `--dataset_train_split`, `--dataset_test_split`, `--use_peft`,
`--lora_r`, ...), plus :class:`~discritune_trl.scripts.arguments.RetrieverArguments` for the frozen retriever.
"""
