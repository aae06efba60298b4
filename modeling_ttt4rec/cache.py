"""`TTT4RecCache`: the per-row state that makes incremental inference exactly equal to re-reading the history."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .ttt import InnerState

CONV_NAMES = ("pre_conv", "conv_q", "conv_k")


@dataclass
class TTT4RecCache:
    """Everything a TTT4Rec model must remember about each sequence (row) it has read.

    Follows the calling convention of transformers' recurrent models: `out = model(ids, use_cache=True)` returns
    `out.cache_params`, and `model(new_ids, cache_params=cache, use_cache=True)` continues from it and returns it
    updated (the object is updated in place).

    Attributes:
        inner_states: per layer, the inner weights at each row's last mini-batch boundary and the gradient sums of
            the items read since (`InnerState`, tensors `[batch, heads, ...]`).
        conv_states: per layer, the last `conv_kernel - 1` inputs of each causal convolution (`mamba` backbone
            only; `{}` otherwise), `[batch, hidden, conv_kernel - 1]`.
        seen: `[batch]`, how many items each row has read.
        last_hidden_state: `[batch, hidden]`, the final hidden state at each row's newest item (what the next-item
            scores are computed from), zeros for rows that have read nothing.
        config_dict: the configuration fields the cache's shapes and meaning depend on
            (`cache_config_dict(model.config)`); using or loading a cache with a model of another configuration is
            an error. Only the configuration is checked, not the weights: a cache made by another checkpoint of the
            same configuration is accepted and gives wrong scores, so keep caches next to the checkpoint that made
            them.
    """

    inner_states: list[InnerState]
    conv_states: list[dict[str, torch.Tensor]]
    seen: torch.Tensor
    last_hidden_state: torch.Tensor
    config_dict: dict

    @property
    def batch_size(self) -> int:
        return self.seen.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seen.device

    def __repr__(self) -> str:  # a summary: the tensors themselves are long
        seen = self.seen.tolist()
        shown = str(seen) if len(seen) <= 8 else f"{str(seen[:8])[:-1]}, ...]"
        return (
            f"TTT4RecCache(batch_size={self.batch_size}, layers={len(self.inner_states)}, seen={shown}, "
            f"device={self.device}, dtype={self.last_hidden_state.dtype})"
        )

    def get_seq_length(self) -> torch.Tensor:
        """Number of items read, per row `[batch]`."""
        return self.seen

    # ------------------------------------------------------------------------------------------------------------
    # Row operations
    # ------------------------------------------------------------------------------------------------------------

    def _map(self, fn) -> "TTT4RecCache":
        """A new cache with `fn` applied to every tensor (all tensors have the batch as first dimension)."""
        inner = [
            InnerState(
                weights={k: fn(v) for k, v in s.weights.items()},
                pending={k: fn(v) for k, v in s.pending.items()},
            )
            for s in self.inner_states
        ]
        conv = [{k: fn(v) for k, v in c.items()} for c in self.conv_states]
        return TTT4RecCache(inner, conv, fn(self.seen), fn(self.last_hidden_state), dict(self.config_dict))

    def select(self, indices: torch.Tensor | list[int] | list[bool]) -> "TTT4RecCache":
        """Rows `indices`, in that order: selects, reorders, repeats or drops rows (e.g. `cache.select([2, 0])`);
        a boolean mask of length `batch_size` keeps the rows where it is True."""
        indices = torch.as_tensor(indices, device=self.device)
        if indices.numel() == 0:  # `[]` makes a float tensor: no rows is a valid selection
            indices = indices.long()
        if indices.dtype == torch.bool:
            if indices.shape != (self.batch_size,):
                raise ValueError(
                    f"A boolean row mask must have one entry per row ({self.batch_size}), got shape "
                    f"{tuple(indices.shape)}."
                )
            indices = indices.nonzero().flatten()
        elif indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"Row indices must be integers (or a boolean mask), got dtype {indices.dtype}.")
        indices = indices.long()
        if indices.dim() != 1:
            raise ValueError(f"`indices` must be a 1-D list of row numbers, got shape {tuple(indices.shape)}.")
        if indices.numel() and (indices.min() < -self.batch_size or indices.max() >= self.batch_size):
            raise IndexError(f"Row indices must be in [0, {self.batch_size}); got {indices.tolist()}.")
        return self._map(lambda t: t.index_select(0, indices % self.batch_size))

    def reorder_cache(self, beam_idx: torch.Tensor) -> "TTT4RecCache":
        """Alias of `select`, named as transformers' caches name it."""
        return self.select(beam_idx)

    def drop(self, rows: list[int]) -> "TTT4RecCache":
        """All rows but `rows`."""
        drop = {int(r) for r in rows}
        outside = sorted(r for r in drop if not 0 <= r < self.batch_size)
        if outside:
            raise IndexError(f"Rows {outside} to drop are not in [0, {self.batch_size}).")
        return self.select([i for i in range(self.batch_size) if i not in drop])

    @classmethod
    def concatenate(cls, caches: list["TTT4RecCache"]) -> "TTT4RecCache":
        """One cache holding the rows of `caches` one after the other; they must belong to the same model."""
        if not caches:
            raise ValueError("`concatenate` needs at least one cache.")
        first = caches[0]
        for other in caches[1:]:
            if other.config_dict != first.config_dict:
                raise ValueError("Cannot concatenate caches of models with different configurations.")

        def cat(get):
            return torch.cat([get(c) for c in caches], dim=0)

        inner = [
            InnerState(
                weights={k: cat(lambda c, i=i, k=k: c.inner_states[i].weights[k]) for k in s.weights},
                pending={k: cat(lambda c, i=i, k=k: c.inner_states[i].pending[k]) for k in s.pending},
            )
            for i, s in enumerate(first.inner_states)
        ]
        conv = [{k: cat(lambda c, i=i, k=k: c.conv_states[i][k]) for k in s} for i, s in enumerate(first.conv_states)]
        return cls(inner, conv, cat(lambda c: c.seen), cat(lambda c: c.last_hidden_state), dict(first.config_dict))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "TTT4RecCache":
        """Move to `device` and/or cast the floating-point state to `dtype` (`seen` stays int64)."""

        def move(t):
            if t.is_floating_point() and dtype is not None:
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self._map(move)

    # ------------------------------------------------------------------------------------------------------------
    # Disk
    # ------------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat `{name: tensor}` view, e.g. `layers.0.weights.W1`, `layers.0.conv.conv_q`, `seen`."""
        flat = {"seen": self.seen, "last_hidden_state": self.last_hidden_state}
        for i, s in enumerate(self.inner_states):
            flat.update({f"layers.{i}.weights.{k}": v for k, v in s.weights.items()})
            flat.update({f"layers.{i}.pending.{k}": v for k, v in s.pending.items()})
        for i, c in enumerate(self.conv_states):
            flat.update({f"layers.{i}.conv.{k}": v for k, v in c.items()})
        return flat

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache to a safetensors file (with the model configuration in its metadata)."""
        if Path(path).is_dir():
            raise IsADirectoryError(
                f"{path} is a folder: pass the path of the cache file to write, e.g. {path}/cache.safetensors."
            )
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"ttt4rec_config": json.dumps(self.config_dict, sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike, config=None, device=None) -> "TTT4RecCache":
        """Read a cache written by `save`. With `config` (the model's), check that the cache belongs to it."""
        from safetensors import SafetensorError, safe_open

        if not Path(path).is_file():
            what = "a folder" if Path(path).is_dir() else "not found"
            raise FileNotFoundError(f"No cache file {path} ({what}): pass the file that `cache.save(path)` wrote.")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            if "ttt4rec_config" not in metadata:
                raise ValueError(f"{path} is not a TTT4Rec cache file (no `ttt4rec_config` in its metadata).")
            flat = load_file(str(path), device=str(device) if device is not None else "cpu")
        except SafetensorError as error:
            raise OSError(
                f"The cache file {path} could not be read ({error}); it is probably truncated or corrupted: save "
                "the cache again, or rebuild it by reading the histories."
            ) from error
        config_dict = json.loads(metadata["ttt4rec_config"])
        if config is not None:
            check_config(config_dict, cache_config_dict(config))
        _check_layout(path, flat, config_dict)
        return cls.from_state_dict(flat, config_dict)

    @classmethod
    def from_state_dict(cls, flat: dict[str, torch.Tensor], config_dict: dict) -> "TTT4RecCache":
        """The cache whose `state_dict()` is `flat` (the tensors are used as they are, not copied)."""
        inner, conv = [], []
        for i in range(config_dict["num_hidden_layers"]):

            def part(kind, i=i):
                prefix = f"layers.{i}.{kind}."
                return {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}

            inner.append(InnerState(weights=part("weights"), pending=part("pending")))
            conv.append(part("conv"))
        return cls(inner, conv, flat["seen"], flat["last_hidden_state"], dict(config_dict))


def _expected_tensors(config_dict: dict) -> list[str]:
    """The tensor names of a cache of a model with this configuration (see `TTT4RecCache.state_dict`)."""
    inner = ["W1", "b1"] + (["W2", "b2"] if config_dict["ttt_layer_type"] == "mlp" else [])
    conv = list(CONV_NAMES) if config_dict["backbone"] == "mamba" else []
    names = ["seen", "last_hidden_state"]
    for i in range(config_dict["num_hidden_layers"]):
        names += [f"layers.{i}.{kind}.{k}" for kind in ("weights", "pending") for k in inner]
        names += [f"layers.{i}.conv.{k}" for k in conv]
    return names


def _check_layout(path, flat: dict[str, torch.Tensor], config_dict: dict) -> None:
    """Raise a `ValueError` if a loaded cache lacks tensors, has extra ones, or its tensors disagree on the rows."""
    expected = _expected_tensors(config_dict)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path} does not hold the tensors of a cache of this configuration (missing: {missing}, unexpected: "
            f"{extra}); it is damaged or was written by other code. Save the cache again."
        )
    rows = {name: tensor.shape[0] if tensor.dim() else None for name, tensor in flat.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"{path}: the cache's tensors disagree on the number of rows ({rows}); save the cache again.")


# The configuration fields that decide the shape and meaning of a cache.
_STATE_FIELDS = (
    "num_items",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "backbone",
    "ttt_layer_type",
    "ttt_mlp_expansion",
    "mini_batch_size",
    "conv_kernel",
)


def cache_config_dict(config) -> dict:
    """The part of a model configuration a cache depends on."""
    return {name: getattr(config, name) for name in _STATE_FIELDS}


def check_cache_type(cache_params) -> None:
    """Raise a `ValueError` unless `cache_params` is a `TTT4RecCache` (not e.g. transformers' `DynamicCache`)."""
    if not isinstance(cache_params, TTT4RecCache):
        raise ValueError(
            f"`cache_params` must be a TTT4RecCache (from `model.init_cache(batch_size)` or an output's "
            f"`.cache_params`), got {type(cache_params).__name__}: other caches do not hold a TTT model's state."
        )


def check_config(cache_config: dict, expected: dict) -> None:
    """Raise a `ValueError` naming the differences if a cache (`cache_config`) does not belong to the model whose
    `cache_config_dict` is `expected`."""
    if cache_config == expected:
        return
    diffs = [
        f"{k}: cache has {cache_config.get(k)!r}, model has {v!r}"
        for k, v in expected.items()
        if cache_config.get(k) != v
    ]
    if diffs:
        raise ValueError(
            "This cache was made by a model with another configuration (" + "; ".join(diffs) + "). "
            "Use a cache created by this model, e.g. `model(input_ids, use_cache=True).cache_params`."
        )
