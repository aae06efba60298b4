"""Incremental inference with `TTT4RecCache` equals one full forward, for every variant and feeding pattern."""

import copy

import pytest
import torch
from helpers import perturbed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_ttt4rec import TTT4RecCache, TTT4RecConfig, TTT4RecForNextItemPrediction

VARIANTS = [(b, t) for b in ("transformer", "mamba") for t in ("linear", "mlp")]
NUM_ITEMS = 30
_MODELS: dict = {}


def model_for(backbone: str, ttt_layer_type: str, mini_batch_size: int) -> TTT4RecForNextItemPrediction:
    key = (backbone, ttt_layer_type, mini_batch_size)
    if key not in _MODELS:
        config = TTT4RecConfig(
            num_items=NUM_ITEMS,
            hidden_size=8,
            intermediate_size=12,
            num_attention_heads=2,
            num_hidden_layers=2,
            backbone=backbone,
            ttt_layer_type=ttt_layer_type,
            mini_batch_size=mini_batch_size,
        )
        torch.manual_seed(mini_batch_size)
        _MODELS[key] = perturbed(TTT4RecForNextItemPrediction(config).eval(), 0.1)
    return _MODELS[key]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, (ids != 0).long()


def full_forward(model, rows):
    ids, mask = padded(rows)
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False)


def feed(model, rows, chunk_sizes, cache=None):
    """Feed each row's items in chunks (`chunk_sizes[i]` is a list of chunk sizes for row i); returns the
    per-row outputs at every item and the cache."""
    per_row = [[] for _ in rows]
    starts = [0] * len(rows)
    step = 0
    while any(starts[i] < len(rows[i]) for i in range(len(rows))):
        chunk = []
        for i, row in enumerate(rows):
            size = chunk_sizes[i][step] if step < len(chunk_sizes[i]) else len(row)
            chunk.append(row[starts[i] : starts[i] + size])
        ids, mask = padded(chunk)
        if cache is None and not mask.any(dim=1).all():  # a row with no item yet needs a cache to start from
            cache = model.init_cache(len(rows))
        with torch.no_grad():
            out = model(ids, attention_mask=mask, cache_params=cache, use_cache=True)
        cache = out.cache_params
        for i, items in enumerate(chunk):
            per_row[i].extend(out.last_hidden_state[i, : len(items)])
            starts[i] += len(items)
        step += 1
    return per_row, cache


def assert_matches_full(model, rows, per_row, cache):
    full = full_forward(model, rows)
    for i, row in enumerate(rows):
        torch.testing.assert_close(
            torch.stack(per_row[i]), full.last_hidden_state[i, : len(row)], rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(model.score_items(cache.last_hidden_state), full.logits, rtol=1e-4, atol=1e-4)
    assert cache.seen.tolist() == [len(r) for r in rows]


histories = st.lists(st.lists(st.integers(1, NUM_ITEMS - 1), min_size=1, max_size=60), min_size=1, max_size=4)


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), VARIANTS)
@pytest.mark.parametrize("mini_batch_size", [1, 3, 8])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=histories, data=st.data())
def test_any_chunking_equals_full_forward(backbone, ttt_layer_type, mini_batch_size, rows, data):
    model = model_for(backbone, ttt_layer_type, mini_batch_size)
    # per row, per step: how many new items (0 = this row receives nothing in this step)
    chunk_sizes = [data.draw(st.lists(st.integers(0, 13), min_size=1, max_size=12)) for _ in rows]
    per_row, cache = feed(model, rows, chunk_sizes)
    assert_matches_full(model, rows, per_row, cache)


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), VARIANTS)
def test_one_item_at_a_time_and_all_at_once(backbone, ttt_layer_type):
    model = model_for(backbone, ttt_layer_type, 3)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, NUM_ITEMS, (n,), generator=generator).tolist() for n in (17, 5, 9)]
    per_row, cache = feed(model, rows, [[1] * 17] * 3)
    assert_matches_full(model, rows, per_row, cache)
    per_row, cache = feed(model, rows, [[17]] * 3)
    assert_matches_full(model, rows, per_row, cache)


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), [("transformer", "linear"), ("mamba", "mlp")])
def test_compiled_step_equals_eager_and_full_forward(backbone, ttt_layer_type):
    """`compile_step()`: one-item steps run as one compiled graph (no graph break: `fullgraph=True` would raise),
    across every position of the inner mini-batch, with rows that receive nothing in some steps, mixed with
    multi-item chunks (which stay eager)."""
    eager = model_for(backbone, ttt_layer_type, 3)
    compiled = copy.deepcopy(eager)
    compiled.compile_step()
    calls = []
    compiled_encode = compiled.model._compiled_step
    compiled.model._compiled_step = lambda *args: calls.append(1) or compiled_encode(*args)
    generator = torch.Generator().manual_seed(5)
    rows = [torch.randint(1, NUM_ITEMS, (n,), generator=generator).tolist() for n in (14, 9, 11)]
    chunk_sizes = [[1] * 5 + [3] + [1] * 6, [1, 0, 1, 1, 0, 2, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 4, 1, 1]]
    per_row, cache = feed(compiled, rows, chunk_sizes)
    assert len(calls) >= 10
    assert_matches_full(eager, rows, per_row, cache)
    eager_rows, eager_cache = feed(eager, rows, chunk_sizes)
    for mine, theirs in zip(per_row, eager_rows, strict=True):
        torch.testing.assert_close(torch.stack(mine), torch.stack(theirs), rtol=1e-5, atol=1e-6)
    for name, tensor in cache.state_dict().items():
        torch.testing.assert_close(tensor, eager_cache.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_step_is_not_copied_or_pickled(tmp_path):
    model = copy.deepcopy(model_for("transformer", "mlp", 3))
    model.compile_step()  # (compiles lazily, at the first step)
    assert model.model._compiled_step is not None
    duplicate = copy.deepcopy(model)
    torch.save(model, tmp_path / "model.pt")
    reloaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for other in (duplicate, reloaded):
        assert other.model._compiled_step is None
        torch.testing.assert_close(other(torch.tensor([[3, 4, 5]])).logits, model(torch.tensor([[3, 4, 5]])).logits)


@pytest.mark.parametrize(("backbone", "ttt_layer_type"), VARIANTS)
@settings(max_examples=5, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(1, NUM_ITEMS - 1), min_size=2, max_size=40), min_size=2, max_size=4),
    data=st.data(),
)
def test_row_operations_and_disk_round_trip(tmp_path_factory, backbone, ttt_layer_type, rows, data):
    """Split the rows' histories in two; after the first part, reorder / split-and-concatenate / save-and-load the
    cache; the second part then still gives the full-forward outputs."""
    model = model_for(backbone, ttt_layer_type, 3)
    cut = [data.draw(st.integers(1, len(r) - 1)) for r in rows]
    first = [r[:c] for r, c in zip(rows, cut, strict=True)]
    _, cache = feed(model, first, [[c] for c in cut])

    order = data.draw(st.permutations(range(len(rows))))
    cache = cache.select(list(order))
    split = data.draw(st.integers(1, len(rows) - 1))
    cache = TTT4RecCache.concatenate([cache.select(range(split)), cache.select(range(split, len(rows)))])
    path = tmp_path_factory.mktemp("cache") / "cache.safetensors"
    cache.save(path)
    cache = TTT4RecCache.load(path, config=model.config)

    rest = [rows[i][cut[i] :] for i in order]
    per_row_rest, cache = feed(model, rest, [[len(r)] for r in rest], cache=cache)
    full = full_forward(model, [rows[i] for i in order])
    for j, i in enumerate(order):
        torch.testing.assert_close(
            torch.stack(per_row_rest[j]), full.last_hidden_state[j, cut[i] : len(rows[i])], rtol=1e-4, atol=1e-5
        )


def test_thousands_of_interactions():
    """1,203 items in chunks of 97 (chunk borders fall inside mini-batches). In float64, to show that the two
    computations agree to round-off (float32 round-off grows over a thousand inner steps, to about 1e-5)."""
    model = copy.deepcopy(model_for("transformer", "mlp", 8)).double()
    generator = torch.Generator().manual_seed(1)
    row = torch.randint(1, NUM_ITEMS, (1203,), generator=generator).tolist()
    per_row, cache = feed(model, [row], [[97] * 13])
    full = full_forward(model, [row])
    torch.testing.assert_close(torch.stack(per_row[0]), full.last_hidden_state[0], rtol=1e-9, atol=1e-10)
    assert cache.seen.tolist() == [1203]


def test_drop_and_device_dtype_moves():
    model = model_for("mamba", "linear", 3)
    _, cache = feed(model, [[1, 2, 3, 4], [5, 6], [7, 8, 9]], [[4], [2], [3]])
    kept = cache.drop([1])
    assert kept.batch_size == 2 and kept.seen.tolist() == [4, 3]
    moved = cache.to("cpu", dtype=torch.float64)
    assert moved.inner_states[0].weights["W1"].dtype == torch.float64 and moved.seen.dtype == torch.long
    back = moved.to(dtype=torch.float32)
    torch.testing.assert_close(back.inner_states[1].pending["W1"], cache.inner_states[1].pending["W1"])


# ---------------------------------------------------------------------------------------------------------------
# Misuse
# ---------------------------------------------------------------------------------------------------------------


def test_cache_with_wrong_batch_size():
    model = model_for("transformer", "linear", 3)
    cache = model(torch.tensor([[1, 2], [3, 4]]), use_cache=True).cache_params
    with pytest.raises(ValueError, match="has 3 rows but the cache holds 2"):
        model(torch.tensor([[1], [2], [3]]), cache_params=cache, use_cache=True)


def test_cache_from_another_config(tmp_path):
    model = model_for("transformer", "linear", 3)
    other = model_for("transformer", "linear", 8)
    cache = other(torch.tensor([[1, 2]]), use_cache=True).cache_params
    with pytest.raises(ValueError, match="mini_batch_size: cache has 8, model has 3"):
        model(torch.tensor([[3]]), cache_params=cache, use_cache=True)
    with pytest.raises(ValueError, match="mini_batch_size: cache has 8, model has 3"):
        model.recommend(cache_params=cache)  # no new items: the cache's state is scored as it is
    cache.save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="another configuration"):
        TTT4RecCache.load(tmp_path / "c.safetensors", config=model.config)
    with pytest.raises(ValueError, match="Cannot concatenate"):
        TTT4RecCache.concatenate([cache, model(torch.tensor([[1]]), use_cache=True).cache_params])


def test_out_of_range_ids_in_a_step():
    model = model_for("mamba", "mlp", 3)
    cache = model(torch.tensor([[1, 2]]), use_cache=True).cache_params
    with pytest.raises(ValueError, match=f"Item id {NUM_ITEMS} is outside"):
        model(torch.tensor([[NUM_ITEMS]]), cache_params=cache, use_cache=True)
    assert cache.seen.tolist() == [2]  # the failed step changed nothing


def test_use_cache_while_training_is_refused():
    model = model_for("transformer", "mlp", 3)
    model.train()
    try:
        with pytest.raises(ValueError, match="`use_cache=True` is for inference"):
            model(torch.tensor([[1, 2]]), use_cache=True)
    finally:
        model.eval()


def test_not_a_cache_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="is not a TTT4Rec cache file"):
        TTT4RecCache.load(tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# recommend()
# ---------------------------------------------------------------------------------------------------------------


def test_recommend_top_k_exclusions_candidates_and_id_map():
    model = model_for("transformer", "mlp", 3)
    history = torch.tensor([[4, 9, 2, 7], [5, 1, 0, 0]])
    logits = model(history, use_cache=False).logits
    top = model.recommend(history, top_k=5)
    assert top.item_ids.tolist() == logits.topk(5).indices.tolist()
    assert (top.item_ids != 0).all()

    unseen = model.recommend(history, top_k=NUM_ITEMS - 5, exclude_seen=True)
    for row, items in zip(history.tolist(), unseen.item_ids.tolist(), strict=True):
        assert not set(row) & set(items)

    candidates = torch.tensor([3, 6, 8, 11])
    among = model.recommend(history, top_k=2, candidates=candidates)
    assert set(among.item_ids.flatten().tolist()) <= set(candidates.tolist())
    expected = candidates[logits[:, candidates].topk(2).indices]
    assert among.item_ids.tolist() == expected.tolist()

    item_map = [f"item-{i}" for i in range(NUM_ITEMS)]
    named = model.recommend(history, top_k=3, item_map=item_map)
    assert named.original_ids == [[f"item-{i}" for i in row] for row in named.item_ids.tolist()]


def test_recommend_with_cache_and_errors():
    model = model_for("mamba", "mlp", 3)
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match=r"Row\(s\) \[0, 1\] have read no item yet"):
        model.recommend(cache_params=cache)
    step = model.recommend(torch.tensor([[3, 4], [5, 0]]), cache_params=cache, top_k=4)
    again = model.recommend(cache_params=step.cache_params, top_k=4)
    assert again.item_ids.tolist() == step.item_ids.tolist()
    with pytest.raises(ValueError, match="`top_k` must be in"):
        model.recommend(cache_params=step.cache_params, top_k=NUM_ITEMS)
    with pytest.raises(ValueError, match="Pass `input_ids`"):
        model.recommend()


def test_a_recommend_call_that_fails_reads_nothing():
    """Every argument of `recommend` is checked before the cache advances: a failed call can be retried."""
    model = model_for("transformer", "linear", 3)
    cache = model(torch.tensor([[3], [4]]), use_cache=True).cache_params
    before = {k: v.clone() for k, v in cache.state_dict().items()}
    bad_calls = [
        ({"top_k": NUM_ITEMS + 5}, "`top_k` must be in"),
        ({"exclude_items": torch.tensor([1, 2])}, r"`exclude_items` must have shape \(2, n\)"),
        ({"exclude_items": torch.tensor([[1], [NUM_ITEMS + 7]])}, r"`exclude_items` must be item ids in \[0, 30\)"),
        ({"candidates": torch.ones(2, 2, 2, dtype=torch.long)}, r"`candidates` must have shape \(n,\) or \(2, n\)"),
        ({"candidates": torch.tensor([-1, 4])}, r"`candidates` must be item ids in \[0, 30\)"),
    ]
    for kwargs, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            model.recommend(torch.tensor([[7], [8]]), cache_params=cache, **kwargs)
        for name, tensor in cache.state_dict().items():
            torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
    fresh = model.init_cache(2)
    with pytest.raises(ValueError, match=r"Row\(s\) \[1\] have read no item yet"):
        model.recommend(torch.tensor([[7], [0]]), cache_params=fresh)
    assert fresh.seen.tolist() == [0, 0]  # row 0 did not read item 7 either
    with pytest.raises(ValueError, match="`item_map` has no entry for item id"):
        model.recommend(torch.tensor([[7], [8]]), cache_params=cache, item_map={})
    assert cache.seen.tolist() == [2, 2]  # (the map is applied to the result: this call did read its items)


def test_exclude_items_never_clamps_and_candidates_may_be_item_zero_without_padding():
    model = model_for("transformer", "linear", 3)
    history = torch.tensor([[4, 9, 2]])
    logits = model(history, use_cache=False).logits
    best = int(logits.argmax())
    top = model.recommend(history, top_k=3, exclude_items=torch.tensor([[best, 0]]))
    assert best not in top.item_ids.tolist()[0]
    assert top.item_ids.tolist()[0] == logits[0, 1:].topk(4).indices.add(1).tolist()[1:]

    config = TTT4RecConfig(**{**model.config.to_dict(), "pad_token_id": None})
    no_pad = TTT4RecForNextItemPrediction(config).eval()
    among = no_pad.recommend(history, top_k=2, candidates=torch.tensor([0, 5, 6]))
    assert set(among.item_ids.flatten().tolist()) <= {0, 5, 6}


def test_cache_given_with_use_cache_false_is_refused():
    model = model_for("transformer", "linear", 3)
    cache = model(torch.tensor([[1, 2]]), use_cache=True).cache_params
    with pytest.raises(ValueError, match="`cache_params` was given with `use_cache=False`"):
        model(torch.tensor([[3]]), cache_params=cache, use_cache=False)
    assert cache.seen.tolist() == [2]
    continued = model(torch.tensor([[3]]), cache_params=cache)  # use_cache unset: continue from the cache
    assert continued.cache_params is cache and cache.seen.tolist() == [3]


def test_cache_in_another_dtype_is_a_clear_error():
    model = model_for("transformer", "linear", 3)
    cache = model(torch.tensor([[1, 2]]), use_cache=True).cache_params.to(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"cache = cache.to\('cpu', torch.float32\)"):
        model(torch.tensor([[3]]), cache_params=cache)
    with pytest.raises(ValueError, match=r"cache = cache.to\('cpu', torch.float32\)"):
        model.recommend(cache_params=cache)


def test_select_takes_a_boolean_mask_and_refuses_fractions():
    model = model_for("transformer", "linear", 3)
    _, cache = feed(model, [[1, 2], [3, 4, 5], [6]], [[2], [3], [1]])
    assert cache.select(torch.tensor([True, False, True])).seen.tolist() == [2, 1]
    assert cache.select([False, True, False]).seen.tolist() == [3]
    with pytest.raises(ValueError, match="one entry per row"):
        cache.select([True, False])
    with pytest.raises(ValueError, match="must be integers"):
        cache.select(torch.tensor([0.7]))
    with pytest.raises(IndexError, match=r"Rows \[5\] to drop are not in \[0, 3\)"):
        cache.drop([5])


@pytest.mark.parametrize("damage", ["truncated", "missing tensor", "extra tensor", "rows disagree"])
def test_damaged_cache_file_is_a_clear_error(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    model = model_for("mamba", "mlp", 3)
    cache = model(torch.tensor([[1, 2], [3, 4]]), use_cache=True).cache_params
    path = tmp_path / "cache.safetensors"
    cache.save(path)
    metadata = {"ttt4rec_config": __import__("json").dumps(cache.config_dict)}
    tensors = load_file(str(path))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
        error, message = OSError, "could not be read .* probably truncated or corrupted"
    elif damage == "missing tensor":
        del tensors["layers.0.weights.W2"]
        save_file(tensors, str(path), metadata=metadata)
        error, message = ValueError, r"missing: \['layers.0.weights.W2'\]"
    elif damage == "extra tensor":
        tensors["layers.0.weights.W3"] = tensors["layers.0.weights.W1"].clone()
        save_file(tensors, str(path), metadata=metadata)
        error, message = ValueError, r"unexpected: \['layers.0.weights.W3'\]"
    else:
        tensors["seen"] = tensors["seen"][:1]
        save_file(tensors, str(path), metadata=metadata)
        error, message = ValueError, "disagree on the number of rows"
    with pytest.raises(error, match=message):
        TTT4RecCache.load(path, config=model.config)


def test_compiled_step_compiles_once_per_batch_size():
    """After the first compiled step, later steps (every position of the inner mini-batch) reuse the graph."""
    model = copy.deepcopy(model_for("transformer", "mlp", 3))  # the shared test model stays eager
    model.compile_step()
    cache = model(torch.tensor([[1, 2], [3, 4]]), use_cache=True).cache_params
    model.recommend(torch.tensor([[5], [6]]), cache_params=cache)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for item in range(7, 14):
            model.recommend(torch.tensor([[item], [item + 1]]), cache_params=cache)
    assert cache.seen.tolist() == [10, 10]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_new_cache_never_shares_memory_with_the_model(batch_size):
    """Writing into a fresh cache in place (as a server restoring a state does) must not change the model."""
    model = TTT4RecForNextItemPrediction(
        TTT4RecConfig(num_items=20, hidden_size=8, intermediate_size=8, num_attention_heads=2)
    ).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cache = model.init_cache(batch_size)
    for state in cache.inner_states:
        for tensor in (*state.weights.values(), *state.pending.values()):
            tensor.add_(1.0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
