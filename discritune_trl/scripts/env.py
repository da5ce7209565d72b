"""`discritune-trl env`: the versions to paste into a bug report, like `trl env`."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from .. import __version__


PACKAGES = ("torch", "torchvision", "transformers", "trl", "accelerate", "peft", "open_clip_torch", "datasets")


def environment() -> dict[str, str]:
    """Platform, Python, the accelerator, and the versions of discritune-trl and the libraries it runs on."""
    info = {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "discritune-trl version": __version__,
        "Accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
    }
    for package in PACKAGES:
        try:
            info[f"{package} version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[f"{package} version"] = "not installed"
    return info


def main(argv: list[str] | None = None) -> None:
    """Print :func:`environment` as `- key: value` lines."""
    if argv:
        raise SystemExit(f"discritune-trl env takes no arguments, got {argv}")
    print("\nCopy-paste the following information when reporting an issue:\n")
    print("\n".join(f"- {key}: {value}" for key, value in environment().items()) + "\n")


if __name__ == "__main__":
    main()
