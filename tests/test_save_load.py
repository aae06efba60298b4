"""save_pretrained / from_pretrained, the Auto classes and remote code (trust_remote_code) round trips."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import logits_in_fresh_process, tiny_model
from transformers import AutoConfig, AutoModel

import modeling_ttt4rec
from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

# the four variants of the first paper, and the second paper's TTT-Linear model with its target MLP tower
VARIANTS = [(b, t, "embedding") for b in ("transformer", "mamba") for t in ("linear", "mlp")]
VARIANTS.append(("transformer", "linear", "target_mlp"))
IDS = torch.tensor([[3, 7, 1, 9, 4, 4, 2, 8, 5, 6, 1], [2, 2, 5, 0, 0, 0, 0, 0, 0, 0, 0]])


def trained_looking_model(
    backbone: str, ttt_layer_type: str, item_scoring: str = "embedding"
) -> TTT4RecForNextItemPrediction:
    return tiny_model(
        perturb=0.1,
        num_items=12,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        backbone=backbone,
        ttt_layer_type=ttt_layer_type,
        item_scoring=item_scoring,
        target_mlp_size=6,
    )


@pytest.mark.parametrize(("backbone", "ttt_layer_type", "item_scoring"), VARIANTS)
def test_save_and_load_with_auto_classes(tmp_path, backbone, ttt_layer_type, item_scoring):
    model = trained_looking_model(backbone, ttt_layer_type, item_scoring)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and "config.json" in files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ttt4rec"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_ttt4rec.TTT4RecConfig",
        "AutoModel": "modeling_ttt4rec.TTT4RecForNextItemPrediction",
    }
    # the source files that remote code needs travel with the checkpoint, all from the package root
    package_root = Path(modeling_ttt4rec.__file__).parent
    root_modules = {p.name for p in package_root.glob("*.py")} - {"__init__.py"}
    shipped = {"configuration_ttt4rec.py", "modeling_ttt4rec.py", "ttt.py", "cache.py", "losses.py"}
    shipped.add("recommender_head.py")
    assert shipped <= set(files)
    assert {f for f in files if f.endswith(".py")} == root_modules

    assert isinstance(AutoConfig.from_pretrained(tmp_path), TTT4RecConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is TTT4RecForNextItemPrediction
    assert not loaded.training
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
        torch.testing.assert_close(loaded(IDS, use_cache=False).logits, expected, rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_load_in_bfloat16(tmp_path):
    model = trained_looking_model("transformer", "mlp")
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.item_embeddings.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = loaded(IDS, use_cache=False).logits[:, 1:]
        reference = model(IDS, use_cache=False).logits[:, 1:]
    # the same model, rounded to bfloat16 (8 significant bits): close to the float32 scores, relative to their scale
    error = (logits.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05, error


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    trained_looking_model("transformer", "mlp").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match="probably truncated or corrupted"):
        AutoModel.from_pretrained(tmp_path)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import torch

    class Block(importlib.abc.MetaPathFinder):
        # make sure nothing imports the installed package: only the checkpoint's own files may be used
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_ttt4rec" or name.startswith("modeling_ttt4rec."):
                raise ImportError("the ttt4rec package must not be imported in this test")
            return None

    sys.meta_path.insert(0, Block())
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    ids = torch.tensor(json.loads(sys.argv[2]))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    print(json.dumps({"module": type(model).__module__, "logits": logits.tolist()}))
    """
)


@pytest.mark.parametrize(("backbone", "ttt_layer_type", "item_scoring"), VARIANTS)
def test_remote_code_in_fresh_process(tmp_path, backbone, ttt_layer_type, item_scoring):
    model = trained_looking_model(backbone, ttt_layer_type, item_scoring)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    loaded = logits_in_fresh_process(checkpoint, IDS, tmp_path, REMOTE_SCRIPT)
    assert loaded["module"].startswith("transformers_modules."), loaded["module"]
    with torch.no_grad():
        expected = model(IDS, use_cache=False).logits
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=0)
    assert Path(tmp_path, "hf_home", "modules").exists()  # the HF_HOME of the fresh process
