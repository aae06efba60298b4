"""The part every baseline shares: the recommender interface on top of an encoder (item ids -> hidden states).

A baseline subclasses `SequentialRecommender`, builds `self.item_embedding` (the item table, which is also what
items are scored against, as in RecBole) and implements `encode`. This module gives it the rest of the project's
recommender interface (`modeling_ttt4rec.training.arguments.register_model`): `forward` with `labels` computing the
full-softmax cross-entropy over the items (the padding id excluded; `losses.full_item_cross_entropy`, the loss of
TTT4Rec too), `item_features`, `score_items` and `score_candidates`.

Every score is `h . e_i` with the item embedding `e_i` (RecBole's `full_sort_predict`); the padding id scores the
lowest representable value, so it is never ranked above an item.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .losses import full_item_cross_entropy


@dataclass
class NextItemOutput(ModelOutput):
    """Output of a baseline's `forward`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The cross-entropy of the labelled targets: their sum divided by `num_items_in_batch`, or their mean.
        logits (`torch.FloatTensor` of shape `(batch_size, num_items)`, *optional*, not with `return_logits=False`):
            Scores of every item as the next item after each row's newest item.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            The hidden state after each item (positions after a row's last item are padding).
        cache_params (*optional*): the model's cache after this call (models that have one, with `use_cache=True`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    cache_params: Any | None = None


class SequentialRecommender(PreTrainedModel):
    """Base class of the baselines: the recommender interface around `encode`.

    Subclasses define `item_embedding` (`nn.Embedding(num_items, hidden)`) and
    `encode(input_ids, attention_mask, cache_params, use_cache) -> (hidden [batch, seq, hidden], cache or None)`;
    a model with a cache also defines `init_cache(batch_size)` (its cache keeps `last_hidden_state`, the hidden state
    after each row's newest item).
    """

    main_input_name = "input_ids"
    # the loss honours `num_items_in_batch` (sum over targets / num_items_in_batch), as the trainer expects
    accepts_loss_kwargs = True

    def encode(self, input_ids, attention_mask, cache_params, use_cache):  # pragma: no cover - abstract
        raise NotImplementedError

    def item_features(self, item_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """The vectors hidden states are scored against: the item embeddings `[..., hidden]` of `item_ids`, or
        `[num_items, hidden]` for all items (the padding id's row included)."""
        weight = self.item_embedding.weight
        return weight if item_ids is None else F.embedding(item_ids, weight)

    def score_items(self, hidden_states: torch.Tensor, item_features: torch.Tensor | None = None) -> torch.Tensor:
        """Scores `[..., num_items]` (float32 at least) of every item for hidden states `[..., hidden]`, the padding
        id at the lowest value. `item_features`: `self.item_features()` in any layout, if already computed."""
        features = self.item_features() if item_features is None else item_features
        logits = hidden_states @ features.T
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.config.pad_token_id is not None:
            logits[..., self.config.pad_token_id] = torch.finfo(logits.dtype).min
        return logits

    def score_candidates(
        self, hidden_states: torch.Tensor, candidate_ids: torch.LongTensor, *, check_inputs: bool = True
    ) -> torch.Tensor:
        """Scores `[batch, num_candidates]` of each row's candidate items `candidate_ids` `[batch, num_candidates]`
        for hidden states `[batch, hidden]`."""
        if candidate_ids.dim() != 2 or hidden_states.dim() != 2 or candidate_ids.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                "`candidate_ids` must be [batch, num_candidates] and `hidden_states` [batch, hidden]; got "
                f"{tuple(candidate_ids.shape)} and {tuple(hidden_states.shape)}."
            )
        if check_inputs:
            self._check_ids(candidate_ids, "candidate_ids")
        scores = torch.einsum("bh,bch->bc", hidden_states, self.item_features(candidate_ids).to(hidden_states.dtype))
        return scores.to(torch.promote_types(scores.dtype, torch.float32))

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache_params: Any | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        *,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        check_inputs: bool = True,
        **kwargs,
    ) -> NextItemOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Right-padded item histories (with a cache: each row's next items).
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for items, 0 for padding (default: `input_ids != pad_token_id`).
            labels (`torch.LongTensor`, *optional*):
                `(batch_size, sequence_length)`: the next item after each position, -100 where there is none (one
                pass trains on every prefix at once); or `(batch_size,)`: the next item after each row's newest item.
            cache_params, use_cache: the model's cache, for models that have one (`init_cache`).
            num_items_in_batch (`int` or `torch.Tensor`, *optional*):
                The loss is the summed cross-entropy divided by this; without it, the mean over the targets.
            return_logits (`bool`, *optional*, defaults to `True`): score every item after each row's newest item.
            check_inputs (`bool`, *optional*, defaults to `True`): validate the values of the inputs (`False` skips
                the checks that synchronise with the device).
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected arguments {sorted(kwargs)}.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        mask = self._check_inputs(input_ids, attention_mask, check_inputs)
        hidden, cache = self.encode(input_ids, mask, cache_params, bool(use_cache))
        newest = None
        if return_logits or (labels is not None and labels.dim() == 1):
            if cache is not None:
                newest = cache.last_hidden_state.to(hidden.dtype)
            else:
                last = mask.long().sum(dim=1) - 1
                newest = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = self.score_items(newest) if return_logits else None
        loss = None
        if labels is not None:
            if labels.shape == mask.shape:
                targeted = labels != -100
                hidden_t, targets = hidden[targeted], labels[targeted]
            elif labels.shape == mask.shape[:1]:
                hidden_t, targets = newest, labels
            else:
                raise ValueError(
                    f"`labels` must have shape {tuple(mask.shape)} (a target per position, -100 for none) or "
                    f"{tuple(mask.shape[:1])} (one target per row); got {tuple(labels.shape)}."
                )
            if check_inputs:
                self._check_targets(targets)
            loss_sum = full_item_cross_entropy(
                hidden_t, self.item_features(), targets, pad_token_id=self.config.pad_token_id
            )
            loss = loss_sum / (targets.shape[0] if num_items_in_batch is None else num_items_in_batch)
        output = NextItemOutput(loss=loss, logits=logits, last_hidden_state=hidden, cache_params=cache)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------- input checks
    def _check_ids(self, ids: torch.Tensor, name: str) -> None:
        """Every id of `ids` is in `[0, num_items)`."""
        if ids.numel():
            low, high = (int(v) for v in torch.aminmax(ids))
            if low < 0 or high >= self.config.num_items:
                raise ValueError(
                    f"`{name}` must be item ids in [0, {self.config.num_items}) (`num_items`, padding id "
                    f"{self.config.pad_token_id} included); got values in [{low}, {high}]. Map unknown items to "
                    "known ids or drop them first."
                )

    def _check_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, check_values: bool
    ) -> torch.Tensor:
        """The attention mask (the default one when None), after checking the shapes and (`check_values`) that ids
        are in range and histories right-padded."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(
                "`input_ids` must be a 2-D integer tensor (batch_size, sequence_length) of item ids; for a single "
                "history use `input_ids[None]`."
            )
        pad = self.config.pad_token_id
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids) if pad is None else input_ids.ne(pad).long()
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has shape "
                f"{tuple(input_ids.shape)}; they must match."
            )
        if check_values:
            self._check_ids(input_ids, "input_ids")
            mask = attention_mask.bool()
            if mask.shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
                raise ValueError("Histories must be right-padded: in each row, all items first, then padding.")
        return attention_mask

    def _check_targets(self, targets: torch.Tensor) -> None:
        """At least one target, every one a real item id."""
        if targets.numel() == 0:
            raise ValueError("`labels` holds no target (all -100): nothing to compute a loss from.")
        pad = self.config.pad_token_id
        bad = (targets < 0) | (targets >= self.config.num_items) | (targets == (-1 if pad is None else pad))
        if bad.any():
            raise ValueError(
                f"`labels` must be item ids in [0, {self.config.num_items}) other than the padding id {pad} (use "
                "-100 to mark positions without a target)."
            )


def check_settings(config, sizes: tuple[str, ...], probabilities: tuple[str, ...]) -> None:
    """The rules every baseline's configuration follows: raise a `ValueError` naming the setting if one of `sizes` is
    below 1, one of `probabilities` (dropouts) outside [0, 1), `num_items` below 2 (it counts the padding id) or
    `pad_token_id` not an item id."""
    for name in sizes:
        if getattr(config, name) < 1:
            raise ValueError(f"`{name}` must be >= 1, got {getattr(config, name)}.")
    if config.num_items < 2:
        raise ValueError(f"`num_items` counts the padding id and must be >= 2, got {config.num_items}.")
    for name in probabilities:
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"`{name}` must be in [0, 1), got {getattr(config, name)}.")
    if config.pad_token_id is not None and not 0 <= config.pad_token_id < config.num_items:
        raise ValueError(f"`pad_token_id` ({config.pad_token_id}) must be an item id in [0, {config.num_items}).")


__all__ = ["NextItemOutput", "SequentialRecommender", "check_settings"]
