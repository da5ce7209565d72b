import json
import os
import subprocess
import sys

import pytest

from discritune_trl.evaluation import EVALUATE_MODULES, evaluate_module_path


SCRIPT = """
import json, sys
import evaluate
from discritune_trl.evaluation import evaluate_module_path

cache = sys.argv[1]
retrieval = evaluate.load(evaluate_module_path("text_to_image_retrieval"), cache_dir=cache)
eye = [[float(i == j) for j in range(4)] for i in range(4)]
# Captions 0 and 1 point at each other's image; their target ties with two others at 0: rank 4.
swapped = [eye[1], eye[0], eye[2], eye[3]]
out = {"retrieval": retrieval.compute(text_embeds=swapped, image_embeds=eye, num_candidates=4, ks=[1, 4])}
coco = evaluate.load(evaluate_module_path("coco_caption"), cache_dir=cache)
captions = ["a man riding a horse.", "two dogs playing in the snow.", "a red bus on a street."]
for caption in captions:
    coco.add(predictions=caption, references=[caption])
out["coco"] = coco.compute(tokenizer="simple")
print("RESULT" + json.dumps(out))
"""


def test_bundled_modules_load_offline(tmp_path):
    pytest.importorskip("pycocoevalcap")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]),
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "cache")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    assert out["retrieval"] == {"precision_at_1": 0.5, "recall_at_1": 0.5, "recall_at_4": 1.0, "num_candidates": 4}
    assert out["coco"]["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert out["coco"]["cider"] == pytest.approx(10.0)
    assert out["coco"]["num_predictions"] == 3


def test_evaluate_module_paths():
    for name in EVALUATE_MODULES:
        path = evaluate_module_path(name)
        assert os.path.isfile(path) and path.endswith(os.path.join(name, f"{name}.py"))
    with pytest.raises(ValueError, match="choose from"):
        evaluate_module_path("bleu")
