"""The part every baseline shares: the recommender interface on top of an encoder (item ids -> hidden states).

A baseline subclasses `SequentialRecommender`, builds `self.item_embedding` (the item table, which is also what
items are scored against, as in RecBole) and implements `encode` (and `init_cache`, if it has a cache). The next-item
head is the one every recommender of the project shares (`recommender_head.RecommenderHeadMixin`, the module TTT4Rec
uses too; `recommender_head.py` here is a link to it): `forward` with `labels` computing `config.loss_type`'s loss
(the full-softmax cross-entropy over the items by default, the padding id excluded, as RecBole's CE loss; or the
sampled softmax or sampled BCE of `losses.py`), `item_features`, `score_items`, `score_candidates` and `recommend`.

Every score is `h . e_i` with the item embedding `e_i` (RecBole's `full_sort_predict`); the padding id scores the
lowest representable value, so it is never ranked above an item.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .losses import check_loss_settings
from .recommender_head import RecommenderHeadMixin, check_cache_placement, default_attention_mask


@dataclass
class NextItemOutput(ModelOutput):
    """Output of a baseline's `forward`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The `config.loss_type` loss of the labelled targets: their sum divided by `num_items_in_batch`, or their
            mean.
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


class SequentialRecommender(PreTrainedModel, RecommenderHeadMixin):
    """Base class of the baselines: the recommender interface around `encode`.

    Subclasses define `item_embedding` (`nn.Embedding(num_items, hidden)`) and
    `encode(input_ids, attention_mask, cache_params, use_cache) -> (hidden [batch, seq, hidden], cache or None)`;
    a model with a cache also defines `init_cache(batch_size)` (its cache keeps `last_hidden_state`, the hidden state
    after each row's newest item, `seen`, the items read per row, and `batch_size`).
    """

    main_input_name = "input_ids"
    # the loss honours `num_items_in_batch` (sum over targets / num_items_in_batch), as the trainer expects
    accepts_loss_kwargs = True

    def __init__(self, config, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        # the training-split count of each item, for `negative_sampler="popularity"` (`set_item_counts`); a buffer,
        # so it follows the model to its device, but not saved: it belongs to the training data, not the model
        self.register_buffer("item_counts", None, persistent=False)

    def encode(self, input_ids, attention_mask, cache_params, use_cache):  # pragma: no cover - abstract
        raise NotImplementedError

    def item_features(self, item_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """The vectors hidden states are scored against: the item embeddings `[..., hidden]` of `item_ids`, or
        `[num_items, hidden]` for all items (the padding id's row included)."""
        weight = self.item_embedding.weight
        return weight if item_ids is None else F.embedding(item_ids, weight)

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
                The loss is `config.loss_type`'s over these targets.
            cache_params, use_cache: the model's cache, for models that have one (`init_cache`).
            num_items_in_batch (`int` or `torch.Tensor`, *optional*):
                The loss is the summed loss divided by this; without it, the mean over the targets.
            return_logits (`bool`, *optional*, defaults to `True`): score every item after each row's newest item.
            check_inputs (`bool`, *optional*, defaults to `True`): validate the values of the inputs (`False` skips
                the checks that synchronise with the device).
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected arguments {sorted(kwargs)}.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if check_inputs:
            mask = self.validate_inputs(input_ids, attention_mask, cache_params)
        else:
            mask = self._check_shapes(input_ids, attention_mask)
        hidden, cache = self.encode(input_ids, mask, cache_params, bool(use_cache))
        logits, loss = self._head(hidden, mask, cache, labels, num_items_in_batch, return_logits, check_inputs)
        output = NextItemOutput(loss=loss, logits=logits, last_hidden_state=hidden, cache_params=cache)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------- input checks
    def validate_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache_params: Any | None = None
    ) -> torch.Tensor:
        """The attention mask (the default one when None), after checking the shapes, the cache (when given) and
        that ids are in range, histories right-padded and (without a cache) not empty (reading the values
        synchronises with the device)."""
        attention_mask = self._check_shapes(input_ids, attention_mask)
        if cache_params is not None:
            self.validate_cache(cache_params)
            if cache_params.batch_size != input_ids.shape[0]:
                raise ValueError(
                    f"`input_ids` has {input_ids.shape[0]} rows but the cache holds {cache_params.batch_size}; "
                    "select the cache's rows to match (`cache.select(rows)`) or start a new cache."
                )
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.num_input_ids:
                raise ValueError(
                    f"`input_ids` must be item ids in [0, {self.config.num_items}) (`num_items`, padding id "
                    f"{self.config.pad_token_id} included){self._other_input_ids()}; got values in [{low}, {high}]. "
                    "Map unknown items to known ids or drop them first."
                )
        mask = attention_mask.bool()
        if mask.shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("Histories must be right-padded: in each row, all items first, then padding.")
        if cache_params is None and not mask[:, 0].all():
            empty = (~mask[:, 0]).nonzero().flatten().tolist()
            raise ValueError(f"Row(s) {empty} contain no items (all padding); every row needs at least one item.")
        return attention_mask

    @property
    def num_input_ids(self) -> int:
        """`input_ids` hold ids in `[0, num_input_ids)`: the item ids, and the ids a model reads beyond them (after
        `num_items`, described by `_other_input_ids`; BERT4Rec's mask token)."""
        return self.config.num_items

    def _other_input_ids(self) -> str:
        """The ids `input_ids` may hold beyond the items, for the error message (`num_input_ids`); none here."""
        return ""

    def validate_cache(self, cache_params: Any) -> None:
        """Raise a `ValueError` if the model has no cache, or `cache_params` is not its cache, or is on another
        device or in another dtype than the model."""
        if not hasattr(self, "init_cache"):
            raise ValueError(
                f"{type(self).__name__} has no cache: pass whole histories without `cache_params`/`use_cache`."
            )
        expected = type(self.init_cache(1))
        if type(cache_params) is not expected:
            raise ValueError(
                f"`cache_params` must be a {expected.__name__} (`model.init_cache(batch_size)`), got "
                f"{type(cache_params).__name__}."
            )
        check_cache_placement(cache_params.last_hidden_state, self.item_embedding.weight)

    def _check_shapes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The checks that read no tensor values; returns the attention mask (the default one when None)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(
                "`input_ids` must be a 2-D integer tensor (batch_size, sequence_length) of item ids; for a single "
                "history use `input_ids[None]`."
            )
        if attention_mask is None:
            return default_attention_mask(input_ids, self.config.pad_token_id)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has shape "
                f"{tuple(input_ids.shape)}; they must match."
            )
        return attention_mask


def check_settings(config, sizes: tuple[str, ...], probabilities: tuple[str, ...]) -> None:
    """The rules every baseline's configuration follows: raise a `ValueError` naming the setting if one of `sizes` is
    below 1, one of `probabilities` (dropouts) outside [0, 1), `num_items` below 2 (it counts the padding id),
    `pad_token_id` not an item id, or a loss setting the model cannot train with."""
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
    check_loss_settings(config)


__all__ = ["NextItemOutput", "SequentialRecommender", "check_settings"]
