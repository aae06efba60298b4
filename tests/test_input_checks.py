"""Meaningless or careless inputs to the model, its config and its cache: each a clear error naming the fix, never a
failure deep inside a library; ints accepted where a float is meant."""

import json

import pytest
import torch
from transformers import DynamicCache

from dataset_builders.item_ids import ItemIdMap
from modeling_ttt4rec import TTT4RecCache, TTT4RecConfig, TTT4RecForNextItemPrediction

SIZES = {"num_items": 30, "hidden_size": 16, "intermediate_size": 24, "num_attention_heads": 2, "mini_batch_size": 3}


@pytest.fixture(scope="module")
def model() -> TTT4RecForNextItemPrediction:
    torch.manual_seed(0)
    return TTT4RecForNextItemPrediction(TTT4RecConfig(**SIZES)).eval()


def test_ints_are_accepted_where_a_float_is_meant(tmp_path):
    config = TTT4RecConfig(rope_theta=10000, ttt_base_lr=1, initializer_range=0, hidden_dropout_prob=0, **SIZES)
    assert (config.rope_theta, config.ttt_base_lr, config.initializer_range) == (10000.0, 1.0, 0.0)
    assert isinstance(config.rope_theta, float) and isinstance(config.hidden_dropout_prob, float)
    with pytest.raises(Exception, match="hidden_size"):  # an int field keeps its strict type check
        TTT4RecConfig(hidden_size=16.0)
    # a hand-edited config.json
    config.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "rope_theta": 500, "layer_norm_eps": 1}))
    loaded = TTT4RecConfig.from_pretrained(tmp_path)
    assert (loaded.rope_theta, loaded.layer_norm_eps) == (500.0, 1.0)


def test_a_negative_initializer_range_is_refused():
    with pytest.raises(ValueError, match=r"`initializer_range` \(a standard deviation\) must be >= 0, got -1.0"):
        TTT4RecConfig(initializer_range=-1.0)


def test_labels_of_another_dtype(model):
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    labels = torch.tensor([[4, 5, 9], [7, 8, -100]])
    with pytest.raises(ValueError, match=r"`labels` must hold integer item ids \(-100: no target\), got dtype"):
        model(ids, labels=labels.float())
    expected = model(ids, labels=labels).loss
    torch.testing.assert_close(model(ids, labels=labels.int()).loss, expected, rtol=0, atol=0)


@pytest.mark.parametrize("cache", [{}, DynamicCache()], ids=["dict", "DynamicCache"])
def test_a_cache_of_another_kind_is_refused(model, cache):
    with pytest.raises(ValueError, match=r"`cache_params` must be a TTT4RecCache .* got (dict|DynamicCache)"):
        model(torch.tensor([[3]]), cache_params=cache, use_cache=True)
    with pytest.raises(ValueError, match="must be a TTT4RecCache"):
        model.recommend(cache_params=cache)


def test_cache_rows_files_and_summary(model, tmp_path):
    cache = model(torch.tensor([[3, 4], [5, 6]]), use_cache=True).cache_params
    assert cache.select([]).batch_size == 0
    with pytest.raises(IsADirectoryError, match="is a folder: pass the path of the cache file"):
        cache.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No cache file .* \(a folder\)"):
        TTT4RecCache.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"No cache file .* \(not found\)"):
        TTT4RecCache.load(tmp_path / "missing.safetensors")
    text = repr(cache)
    assert text == "TTT4RecCache(batch_size=2, layers=1, seen=[2, 2], device=cpu, dtype=torch.float32)"
    assert "tensor" not in str(cache.select([0] * 20))


def test_recommend_with_an_item_map(model):
    history = torch.tensor([[3, 4, 5]])
    item_map = ItemIdMap([None] + [f"i{k}" for k in range(1, SIZES["num_items"])])
    out = model.recommend(history, top_k=4, item_map=item_map)
    assert out.original_ids == [[f"i{k}" for k in out.item_ids[0].tolist()]]
    cache = model.init_cache(1)
    short = ItemIdMap([None, "a", "b"])
    with pytest.raises(ValueError, match=r"`item_map` has 3 entries, the model 30 ids: pass the item map"):
        model.recommend(history, cache_params=cache, item_map=short)
    assert cache.seen.tolist() == [0]  # refused before the cache read anything
    with pytest.raises(ValueError, match=r"`item_map` has 29 entries"):
        model.recommend(history, item_map=item_map.original_ids[1:])


def test_generate_points_to_recommend(model):
    with pytest.raises(NotImplementedError, match=r"use `model.recommend\(input_ids, top_k=10\)`"):
        model.generate(torch.tensor([[3, 4]]))
