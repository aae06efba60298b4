"""The next-item head every recommender of the project shares: the training loss from `labels`, item scoring and
`recommend`.

A model mixes in [`RecommenderHeadMixin`] after its `PreTrainedModel` base (as transformers' models mix in
`GenerationMixin`) and defines the encoder side:

* `item_features(item_ids=None)`: the vectors hidden states are scored against, `[num_items, hidden]` for all
  items (the padding id's row included);
* `forward(input_ids, attention_mask, labels, cache_params=, use_cache=, return_dict=, *, num_items_in_batch=,
  return_logits=, check_inputs=)`, which runs the encoder and hands its hidden states to `self._head(...)`;
* `validate_inputs(input_ids, attention_mask=None, cache_params=None) -> attention_mask` (every problem a
  `ValueError`, before anything is read) and `validate_cache(cache_params)`;
* for a model with a cache, `init_cache(batch_size)`: a cache with `batch_size`, `seen` (items read per row) and
  `last_hidden_state` (the hidden state after each row's newest item);
* a non-persistent `item_counts` buffer (None until `set_item_counts`).

The mixin gives the rest: `config.loss_type`'s loss (`losses.py`: full cross-entropy, sampled softmax, sampled
BCE), `score_items`, `score_candidates`, `recommend`, `set_item_counts` and `seed_negatives`. Every score is
`h . item_features()[i]`: the loss, the evaluation and `recommend` all score through `score_items` or
`score_candidates`.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from .losses import (
    full_item_cross_entropy,
    sample_negatives,
    sampled_binary_cross_entropy,
    sampled_softmax_cross_entropy,
    shared_negatives,
)

# item chunks (`recommend(item_chunk_size=...)`, the evaluation's `score_ranks`) are multiples of this many items: the
# matmul then computes each score with the same instructions as over the whole catalog (column tiles alike), so the
# chunked scores are the same floats and exact ties stay ties (measured; smaller chunks change the last bits)
ITEM_CHUNK_MULTIPLE = 64


def check_item_chunk_size(item_chunk_size: int | None) -> None:
    """`item_chunk_size` is None (the whole catalog at once) or a positive multiple of `ITEM_CHUNK_MULTIPLE`."""
    if item_chunk_size is not None and (item_chunk_size < 1 or item_chunk_size % ITEM_CHUNK_MULTIPLE):
        raise ValueError(
            f"`item_chunk_size` must be a positive multiple of {ITEM_CHUNK_MULTIPLE} (so that chunked scores are "
            f"the same floats as whole-catalog ones), got {item_chunk_size}; or None for the whole catalog."
        )


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half-precision dtypes, the dtype itself otherwise (float64 is never rounded down)."""
    return torch.promote_types(dtype, torch.float32)


def default_attention_mask(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """1 for items, 0 for the padding id (every position is an item when the model has no padding id)."""
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    return input_ids.ne(pad_token_id).long()


def check_cache_placement(state: torch.Tensor, weight: torch.Tensor) -> None:
    """A cache whose hidden state `state` is on another device or in another dtype than the model's `weight` is a
    `ValueError` that says how to move it."""
    if state.device != weight.device or state.dtype != weight.dtype:
        raise ValueError(
            f"The cache is on {state.device} in {state.dtype} but the model is on {weight.device} in "
            f"{weight.dtype}; move it with `cache = cache.to({str(weight.device)!r}, {weight.dtype})`."
        )


@dataclass
class Recommendations(ModelOutput):
    """Output of a recommender's `recommend`.

    Args:
        item_ids (`torch.LongTensor` of shape `(batch_size, top_k)`): the recommended item ids, best first.
        scores (`torch.FloatTensor` of shape `(batch_size, top_k)`): their scores.
        cache_params (*optional*): the updated cache (when the call read items with a cache).
        original_ids (`list[list]`, *optional*): `item_ids` mapped through `item_map`, when one was given.
    """

    item_ids: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    cache_params: Any | None = None
    original_ids: list | None = None


class RecommenderHeadMixin:
    """The next-item head: the loss of `config.loss_type`, item scoring and `recommend` (see the module docstring
    for what the model defines)."""

    # the generator the sampled losses draw their negatives from (`seed_negatives`); None: torch's global one
    negatives_generator: torch.Generator | None = None

    # ------------------------------------------------------------------------------------------- training settings
    def set_item_counts(self, counts: torch.Tensor | None) -> None:
        """Give the model the training-split count of every item id `[num_items]`, which
        `negative_sampler="popularity"` draws its negatives by (the trainer calls this on every process)."""
        if counts is not None:
            counts = torch.as_tensor(counts)
            if counts.shape != (self.config.num_items,) or bool((counts < 0).any()):
                raise ValueError(
                    f"`counts` must be [num_items] = [{self.config.num_items}] non-negative counts, got shape "
                    f"{tuple(counts.shape)}."
                )
            counts = counts.to(device=self.device, dtype=torch.long)
        self.item_counts = counts

    def seed_negatives(self, seed: int | None) -> None:
        """Draw the negatives of the sampled losses (`loss_type="sampled_softmax"` or `"sampled_bce"`) from a
        generator of their own on the model's device, seeded with `seed`; `None` (the default) draws them from
        torch's global generator. The trainer seeds it alike on every process, so that all of them draw the same
        negatives while dropout keeps each process's own seed (call it after moving the model)."""
        self.negatives_generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

    def _negatives_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator of the negatives for tensors on `device` (None: torch's global one)."""
        generator = self.negatives_generator
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"The negatives generator is on {generator.device} but the model runs on {device}: call "
                "`model.seed_negatives(seed)` again after moving the model."
            )
        return generator

    # ------------------------------------------------------------------------------------------- scoring
    def score_items(
        self, hidden_states: torch.Tensor, item_features: torch.Tensor | None = None, *, first_item: int = 0
    ) -> torch.Tensor:
        """Scores `[..., num_items]` (float32 at least) of every item for hidden states `[..., hidden]`; the padding
        id gets the lowest representable score so it is never ranked above an item.

        Args:
            hidden_states: `[..., hidden]`.
            item_features: `self.item_features()` if already computed, e.g. once for a whole evaluation (with a
                target tower computing it runs the tower over every item). Any layout: the evaluation passes
                `items_t.T` for a contiguous `items_t` `[hidden, num_items]`, the fastest matmul. Or a chunk of it:
                the features of items `first_item .. first_item + n - 1`, scored `[..., n]`.
            first_item: the id of `item_features`' first row (0 for the whole catalog).
        """
        features = self.item_features() if item_features is None else item_features
        logits = hidden_states @ features.T
        logits = logits.to(at_least_float32(logits.dtype))
        pad = self.config.pad_token_id
        if pad is not None and first_item <= pad < first_item + logits.shape[-1]:
            logits[..., pad - first_item] = torch.finfo(logits.dtype).min
        return logits

    def score_candidates(
        self, hidden_states: torch.Tensor, candidate_ids: torch.LongTensor, *, check_inputs: bool = True
    ) -> torch.Tensor:
        """Scores `[batch, num_candidates]` (float32 at least) of each row's own candidate items `candidate_ids`
        `[batch, num_candidates]` for hidden states `[batch, hidden]` (the sampled protocols score only these).
        `check_inputs=False` skips the check that the ids are in range (it synchronises with the device)."""
        if candidate_ids.dim() != 2 or hidden_states.dim() != 2 or candidate_ids.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                "`candidate_ids` must be [batch, num_candidates] and `hidden_states` [batch, hidden]; got "
                f"{tuple(candidate_ids.shape)} and {tuple(hidden_states.shape)}."
            )
        if check_inputs and candidate_ids.numel():
            low, high = (int(v) for v in torch.aminmax(candidate_ids))
            if low < 0 or high >= self.config.num_items:
                raise ValueError(
                    f"`candidate_ids` must be item ids in [0, {self.config.num_items}); got values in "
                    f"[{low}, {high}]. Map unknown items to known ids first."
                )
        features = self.item_features(candidate_ids)  # [batch, num_candidates, hidden]
        scores = torch.einsum("bh,bch->bc", hidden_states, features.to(hidden_states.dtype))
        return scores.to(at_least_float32(scores.dtype))

    # ------------------------------------------------------------------------------------------- forward's head
    def _head(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor,
        cache_params: Any | None,
        labels: torch.Tensor | None,
        num_items_in_batch: int | torch.Tensor | None,
        return_logits: bool,
        check_inputs: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(logits, loss)`: the scores after each row's newest item (when `return_logits`) and the loss of the
        targets of `labels` (when given): their sum divided by `num_items_in_batch`, or their mean."""
        newest = None
        if return_logits or (labels is not None and labels.dim() == 1):
            newest = self._newest(hidden_states, mask, cache_params)
        # computed once per forward, for the logits and the loss (a target tower runs over every item)
        item_features = self.item_features()
        logits = self.score_items(newest, item_features) if return_logits else None
        if labels is None:
            return logits, None
        hidden, targets = self._targets(hidden_states, newest, labels, mask, check_inputs)
        loss_sum = self._loss_sum(hidden, targets, item_features)
        return logits, loss_sum / (targets.shape[0] if num_items_in_batch is None else num_items_in_batch)

    @staticmethod
    def _newest(hidden_states: torch.Tensor, attention_mask: torch.Tensor, cache_params: Any | None) -> torch.Tensor:
        """`[batch, hidden]`: each row's hidden state after its newest item (kept by the cache when there is one,
        since a row may get no new item in a step)."""
        if cache_params is not None:
            return cache_params.last_hidden_state.to(hidden_states.dtype)
        last = attention_mask.long().sum(dim=1) - 1
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]

    def _targets(
        self,
        hidden_states: torch.Tensor,
        newest: torch.Tensor | None,
        labels: torch.Tensor,
        mask: torch.Tensor,
        check_inputs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(hidden [T, hidden], targets [T])`: the hidden state before each target of `labels`, in row-major
        order (positions without a target are never scored)."""
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"`labels` must hold integer item ids (-100: no target), got dtype {labels.dtype}.")
        labels = labels.long()
        if labels.shape == mask.shape:
            targeted = labels != -100
            if check_inputs and (targeted & ~mask.bool()).any():
                raise ValueError(
                    "`labels` has a target at a padding position; set `labels` to -100 wherever `input_ids` is "
                    "padding."
                )
            hidden, targets = hidden_states[targeted], labels[targeted]
        elif labels.shape == mask.shape[:1]:
            hidden, targets = newest, labels
        else:
            raise ValueError(
                f"`labels` must have shape {tuple(mask.shape)} (a target per position, -100 for none) or "
                f"{tuple(mask.shape[:1])} (one target per row); got {tuple(labels.shape)}."
            )
        if check_inputs:
            self._check_targets(targets, one_per_row=labels.dim() == 1)
        return hidden, targets

    def _check_targets(self, targets: torch.Tensor, one_per_row: bool) -> None:
        """Targets are real item ids, and there is at least one."""
        if targets.numel() == 0:
            raise ValueError("`labels` holds no target (all -100): nothing to compute a loss from.")
        if one_per_row and (targets == -100).any():
            raise ValueError("With one target per row, `labels` cannot be -100.")
        pad = self.config.pad_token_id
        num_items = self.config.num_items
        if targets.min() < 0 or targets.max() >= num_items or (pad is not None and (targets == pad).any()):
            valid = f"[1, {num_items})" if pad == 0 else f"[0, {num_items})"
            if pad not in (None, 0):
                valid += f" other than {pad}"
            never = "" if pad is None else f"the padding id {pad} is never a target; "
            raise ValueError(
                f"`labels` must be item ids in {valid} ({never}use -100 to mark positions without a target)."
            )

    def _loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor, item_features: torch.Tensor) -> torch.Tensor:
        """`config.loss_type` of `targets` `[T]` after hidden states `[T, hidden]`, summed over the targets
        (`item_features`: `self.item_features()`)."""
        pad = self.config.pad_token_id
        if self.config.loss_type == "full_ce":
            return full_item_cross_entropy(hidden, item_features, targets, pad_token_id=pad)
        if self.config.loss_type == "sampled_softmax":
            return self._sampled_softmax_sum(hidden, targets)
        # "sampled_bce"
        negatives = sample_negatives(
            targets,
            self.config.num_items,
            self.config.num_negatives,
            self._negatives_generator(hidden.device),
            pad_token_id=pad,
        )
        scores = self.score_candidates(hidden, torch.cat([targets[:, None], negatives], dim=1), check_inputs=False)
        return sampled_binary_cross_entropy(scores[:, 0], scores[:, 1:])

    def _sampled_softmax_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sampled softmax of `targets` against `config.num_negatives` negatives shared by the batch (drawn from
        the negatives generator, `seed_negatives`: the same seed gives the same negatives)."""
        counts = None
        if self.config.negative_sampler == "popularity":
            if self.item_counts is None:
                raise ValueError(
                    "`negative_sampler='popularity'` needs the training-split item counts: call "
                    "`model.set_item_counts(counts)` first (the trainer does), or use `negative_sampler='uniform'`."
                )
            counts = self.item_counts
        negatives, log_expected = shared_negatives(
            self.config.num_items,
            self.config.num_negatives,
            pad_token_id=self.config.pad_token_id,
            item_counts=counts,
            generator=self._negatives_generator(hidden.device),
            device=hidden.device,
        )
        features = self.item_features(torch.cat([targets, negatives]))
        return sampled_softmax_cross_entropy(
            hidden,
            features[: targets.shape[0]],
            targets,
            features[targets.shape[0] :],
            negatives,
            log_expected,
            in_batch_negatives=self.config.in_batch_negatives,
        )

    # ------------------------------------------------------------------------------------------- recommend
    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """Not a text generator: the next items come from `recommend`."""
        raise NotImplementedError(
            f"{type(self).__name__} recommends items, it does not generate sequences: use "
            "`model.recommend(input_ids, top_k=10)` (with `cache_params` to continue a user's history)."
        )

    def recommend(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache_params: Any | None = None,
        top_k: int = 10,
        exclude_seen: bool = False,
        exclude_items: torch.LongTensor | None = None,
        candidates: torch.LongTensor | None = None,
        item_map=None,
        item_chunk_size: int | None = None,
    ) -> Recommendations:
        r"""Top-`k` next items for each row, after its newest item.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                New items to read first (each row's whole history, or its next items when `cache_params` is given).
                Without `input_ids`, recommend from the cache's state as it is.
            attention_mask: see `forward`.
            cache_params (*optional*): the state of the items read before (`init_cache`, for a model that has a
                cache); it is updated.
            top_k (`int`): how many items to return per row.
            exclude_seen (`bool`): never recommend an item of `input_ids` (with a cache, only this call's items are
                known: pass the earlier ones in `exclude_items`).
            exclude_items (`torch.LongTensor` of shape `(batch_size, n)`, *optional*): item ids never to recommend
                to each row (entries equal to the padding id are ignored).
            candidates (`torch.LongTensor` of shape `(n,)` or `(batch_size, n)`, *optional*): recommend only among
                these item ids.
            item_map (*optional*): maps the recommended (dense) item ids to the original ids, filling
                `original_ids`: `dataset_builders`' `ItemIdMap` (anything with `to_original(ids)` and `len()`), a
                sequence indexed by id or a dict. The inputs (`input_ids`, `exclude_items`, `candidates`) are always
                dense ids: map original ids first with `item_map.to_dense(ids)`.
            item_chunk_size (`int`, *optional*): score and filter this many items at a time (a multiple of 64),
                keeping each row's best `top_k` across the chunks, so that memory is `batch_size x item_chunk_size`
                scores (and masks) instead of `batch_size x num_items` (the same items and scores; items scoring
                exactly alike may come in another order).
        """
        if input_ids is None and cache_params is None:
            raise ValueError("Pass `input_ids` (a history), `cache_params` (a state), or both.")
        # Everything is checked before the cache is advanced, so a call that fails has read nothing.
        if input_ids is not None:
            attention_mask = self.validate_inputs(input_ids, attention_mask, cache_params)
        else:
            self.validate_cache(cache_params)
        batch_size = cache_params.batch_size if cache_params is not None else input_ids.shape[0]
        seen = input_ids if exclude_seen else None
        check_item_chunk_size(item_chunk_size)
        filters, allowed, available = self._filters(batch_size, candidates, exclude_items, seen, item_chunk_size)
        self._check_recommendable(top_k, available, cache_params, attention_mask if input_ids is not None else None)
        if item_map is not None and not isinstance(item_map, Mapping) and len(item_map) != self.config.num_items:
            raise ValueError(
                f"`item_map` has {len(item_map)} entries, the model {self.config.num_items} ids: "
                + self._item_map_fix()
                + "."
            )

        logits, newest = self._read_newest(input_ids, attention_mask, cache_params, item_chunk_size)
        if logits is not None:  # the whole catalog at once
            if allowed is not None:
                logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
            scores, item_ids = logits.topk(top_k, dim=1)
        else:
            scores, item_ids = self._chunked_top_k(newest, top_k, item_chunk_size, filters)
        original_ids = None if item_map is None else self._original_ids(item_ids, item_map)
        return Recommendations(item_ids=item_ids, scores=scores, cache_params=cache_params, original_ids=original_ids)

    def _filters(
        self,
        batch_size: int,
        candidates: torch.LongTensor | None,
        exclude_items: torch.LongTensor | None,
        seen: torch.LongTensor | None,
        item_chunk_size: int | None,
    ) -> tuple[tuple | None, torch.Tensor | None, torch.Tensor | None]:
        """`(filters, allowed, available)`: the arguments of `_allowed_items` (None when nothing is filtered), the
        whole-catalog mask `[batch, num_items]` (None when nothing is filtered or scoring goes by item chunks) and
        how many items each row may get (None when nothing is filtered)."""
        if candidates is None and exclude_items is None and seen is None:
            return None, None, None
        num_items = self.config.num_items
        filters = (batch_size, self.device, candidates, exclude_items, seen)
        if item_chunk_size is None:
            allowed = self._allowed_items(*filters, 0, num_items)
            return filters, allowed, allowed.sum(dim=1)
        # counted chunk by chunk, masked again when scored
        available = sum(
            self._allowed_items(*filters, start, start + item_chunk_size).sum(dim=1)
            for start in range(0, num_items, item_chunk_size)
        )
        return filters, None, available

    def _read_newest(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        cache_params: Any | None,
        item_chunk_size: int | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(logits, newest)` after reading `input_ids` (inputs already checked): every item's scores when the
        whole catalog is scored at once, else each row's newest hidden state `[batch, hidden]` to score by chunks."""
        if input_ids is None:
            newest = cache_params.last_hidden_state
            return (self.score_items(newest), None) if item_chunk_size is None else (None, newest)
        output = self(
            input_ids,
            attention_mask,
            cache_params=cache_params,
            use_cache=cache_params is not None,
            check_inputs=False,
            return_logits=item_chunk_size is None,
            return_dict=True,
        )
        if output.logits is not None:
            return output.logits, None
        return None, self._newest(output.last_hidden_state, attention_mask, cache_params)

    def _chunked_top_k(
        self, hidden: torch.Tensor, top_k: int, chunk: int, filters: tuple | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best `top_k` (scores, ids) of each row of `hidden` `[batch, hidden]`, scoring `chunk` items at a time
        through `score_items` (the items `filters` rules out lowest) and merging each chunk's best into the running
        best."""
        features = self.item_features()
        lowest = torch.finfo(at_least_float32(hidden.dtype)).min
        best_scores = best_ids = None
        for start in range(0, self.config.num_items, chunk):
            block = self.score_items(hidden, features[start : start + chunk], first_item=start)
            if filters is not None:
                block = block.masked_fill(~self._allowed_items(*filters, start, start + chunk), lowest)
            scores, ids = block.topk(min(top_k, block.shape[1]), dim=1)
            if best_scores is not None:
                scores, ids = torch.cat([best_scores, scores], dim=1), torch.cat([best_ids, ids + start], dim=1)
                scores, order = scores.topk(min(top_k, scores.shape[1]), dim=1)
                ids = ids.gather(1, order)
            best_scores, best_ids = scores, ids
        return best_scores, best_ids

    def _check_recommendable(
        self,
        top_k: int,
        available: torch.Tensor | None,
        cache_params: Any | None,
        attention_mask: torch.Tensor | None,
    ) -> None:
        """`top_k` items are left to recommend to every row (`available`: how many per row, None when nothing is
        filtered), and every row of the cache has read an item (counting this call's `attention_mask`)."""
        if available is None:  # every item but the padding id (which `score_items` rules out)
            available = self.config.num_items - (self.config.pad_token_id is not None)
        else:
            available = int(available.min())
        if top_k < 1 or top_k > available:
            raise ValueError(f"`top_k` must be in [1, {available}] (the items left to recommend), got {top_k}.")
        if cache_params is not None:
            new_items = attention_mask.sum(dim=1) if attention_mask is not None else 0
            empty = ((cache_params.seen + new_items) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"Row(s) {empty} have read no item yet: there is nothing to recommend from.")

    def _original_ids(self, item_ids: torch.Tensor, item_map) -> list[list]:
        """`item_ids` mapped through `item_map`: an object with `to_original(ids)` (`dataset_builders`' `ItemIdMap`),
        a sequence indexed by item id, or a dict."""
        if hasattr(item_map, "to_original"):
            return [item_map.to_original(row) for row in item_ids.tolist()]
        try:
            return [[item_map[i] for i in row] for row in item_ids.tolist()]
        except (KeyError, IndexError) as error:
            missing = error.args[0] if error.args else ""
            raise ValueError(f"`item_map` has no entry for item id {missing}: {self._item_map_fix()}.") from error

    def _item_map_fix(self) -> str:
        """How to pass a good `item_map` to `recommend`."""
        return (
            f"pass the item map of the data set the model was trained on, one entry per id in [0, "
            f"{self.config.num_items}) (e.g. `ItemIdMap.from_file(checkpoint_folder)`)"
        )

    def _allowed_items(
        self,
        batch_size: int,
        device: torch.device,
        candidates: torch.LongTensor | None,
        exclude_items: torch.LongTensor | None,
        seen: torch.LongTensor | None,
        start: int,
        end: int,
    ) -> torch.Tensor:
        """`[batch, items start .. end - 1]`: True for the items `recommend` may return (never the padding id)."""
        num_items, pad = self.config.num_items, self.config.pad_token_id
        end = min(end, num_items)
        width = end - start
        # a chunk of the catalog gets one more column: ids outside it are scattered there, then dropped
        spare = int(width < num_items)

        def in_range(ids: torch.Tensor) -> torch.Tensor:
            return torch.where((ids >= start) & (ids < end), ids - start, width) if spare else ids

        if candidates is None:
            allowed = torch.ones(batch_size, width + spare, dtype=torch.bool, device=device)
        else:
            candidates = torch.as_tensor(candidates, device=device).long()
            if candidates.dim() == 1:
                candidates = candidates.expand(batch_size, -1)
            if candidates.dim() != 2 or candidates.shape[0] != batch_size:
                raise ValueError(
                    f"`candidates` must have shape (n,) or ({batch_size}, n) for {batch_size} rows, got "
                    f"{tuple(candidates.shape)}."
                )
            if candidates.numel() and (candidates.min() < 0 or candidates.max() >= num_items):
                raise ValueError(f"`candidates` must be item ids in [0, {num_items}).")
            allowed = torch.zeros(batch_size, width + spare, dtype=torch.bool, device=device)
            allowed.scatter_(1, in_range(candidates), True)
        if pad is not None and start <= pad < end:
            allowed[:, pad - start] = False
        if exclude_items is not None:
            exclude_items = torch.as_tensor(exclude_items, device=device).long()
            if exclude_items.dim() != 2 or exclude_items.shape[0] != batch_size:
                raise ValueError(
                    f"`exclude_items` must have shape ({batch_size}, n): a row of item ids for each of the "
                    f"{batch_size} rows (pad short rows with the padding id), got {tuple(exclude_items.shape)}."
                )
            if exclude_items.numel() and (exclude_items.min() < 0 or exclude_items.max() >= num_items):
                raise ValueError(
                    f"`exclude_items` must be item ids in [0, {num_items}); got values in "
                    f"[{int(exclude_items.min())}, {int(exclude_items.max())}]."
                )
            allowed.scatter_(1, in_range(exclude_items), False)
        if seen is not None:
            allowed.scatter_(1, in_range(seen.to(device)), False)
        return allowed[:, :width] if spare else allowed


__all__ = [
    "ITEM_CHUNK_MULTIPLE",
    "Recommendations",
    "RecommenderHeadMixin",
    "at_least_float32",
    "check_cache_placement",
    "check_item_chunk_size",
    "default_attention_mask",
]
