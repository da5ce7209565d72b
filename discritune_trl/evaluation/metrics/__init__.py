"""`evaluate`-compatible metric modules shipped inside the package, loadable with no Hub access.

```python
import evaluate
from discritune_trl.evaluation import evaluate_module_path

coco = evaluate.load(evaluate_module_path("coco_caption"))
coco.compute(predictions=["a dog."], references=[["a dog on grass."]])
```
"""

from __future__ import annotations

import os


EVALUATE_MODULES = ("coco_caption", "text_to_image_retrieval")


def evaluate_module_path(name: str) -> str:
    """Absolute path of the script of a bundled `evaluate` module, for `evaluate.load(path)`.

    Args:
        name (`str`): one of `EVALUATE_MODULES`.
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"No bundled evaluate module named {name!r}; choose from {EVALUATE_MODULES}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name, f"{name}.py")
