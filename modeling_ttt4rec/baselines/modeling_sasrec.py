"""PyTorch SASRec (Kang and McAuley, 2018), exactly as RecBole 1.2.1 builds it, with the project's recommender
interface (`recommender.SequentialRecommender`).

    item ids -> item embedding + learned absolute position embedding -> LayerNorm -> dropout
             -> num_hidden_layers x [ causal multi-head self-attention -> dropout -> + residual -> LayerNorm
                                      -> Linear -> act -> Linear -> dropout -> + residual -> LayerNorm ]
             -> scores h E^T over all items (the item embedding itself; padding excluded)

The parameter names are RecBole's (`item_embedding`, `position_embedding`, `trm_encoder.layer.N.multi_head_attention
.query`, ...), so a RecBole SASRec's `state_dict()` loads as it is. Positions count from each row's first item
(histories are right-padded, as in RecBole); attention is causal, so whole-prefix training scores every prefix of a
history in one pass.

SASRec's cache ([`SASRecCache`]) holds each layer's keys and values of the items read so far: reading a history in
pieces with it gives the hidden states of reading it whole, each new item attending to the cached ones instead of
recomputing them. With learned absolute positions it holds at most `max_position_embeddings` items per row (a longer
history needs its newest items read anew), so it serves step by step within that length, but the `stream` evaluation
mode, which reads whole histories, is not for SASRec (`bounded_cache`): evaluate it in `window` mode.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_sasrec import SASRecConfig
from .recommender import NextItemOutput, SequentialRecommender


class SASRecCache:
    """The state of [`SASRecForNextItemPrediction`] after the items each row has read.

    Attributes:
        keys, values: per layer, `[batch, max_position_embeddings, num_attention_heads, head_size]` the attention's
            keys and values of the items read, in their history positions (slots past a row's `seen` are unused).
        last_hidden_state: `[batch, hidden_size]` the model's hidden state after each row's newest item (what the next
            item is scored from).
        seen: `[batch]` items read per row.
    """

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        last_hidden_state: torch.Tensor,
        seen: torch.Tensor,
    ):
        self.keys, self.values, self.last_hidden_state, self.seen = keys, values, last_hidden_state, seen

    @property
    def batch_size(self) -> int:
        return self.seen.shape[0]

    def select(self, rows) -> "SASRecCache":
        """The cache of rows `rows` (a list or tensor of row indices), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.seen.device)
        return SASRecCache(
            [k[rows] for k in self.keys], [v[rows] for v in self.values], self.last_hidden_state[rows], self.seen[rows]
        )

    def to(self, device=None, dtype=None) -> "SASRecCache":
        """The cache on `device` in floating dtype `dtype`."""
        return SASRecCache(
            [k.to(device=device, dtype=dtype) for k in self.keys],
            [v.to(device=device, dtype=dtype) for v in self.values],
            self.last_hidden_state.to(device=device, dtype=dtype),
            self.seen.to(device=device),
        )


class _CacheStep(NamedTuple):
    """Where one call's new items go in the cache: new item `(rows[n], columns[n])` of the input is written to slot
    `slots[n]` (its history position); `mask` `[batch, 1, seq, max_position_embeddings]` lets each input position
    attend to the slots up to its own."""

    cache: SASRecCache
    rows: torch.Tensor
    columns: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s cached keys and values `[batch, slots, heads, head_size]` with the new items' `keys` and
        `values` `[batch, seq, heads, head_size]` written in; the cache keeps them detached."""
        where = (self.rows, self.slots)
        new_keys = self.cache.keys[layer].to(keys.dtype).index_put(where, keys[self.rows, self.columns])
        new_values = self.cache.values[layer].to(values.dtype).index_put(where, values[self.rows, self.columns])
        self.cache.keys[layer], self.cache.values[layer] = new_keys.detach(), new_values.detach()
        return new_keys, new_values


class SASRecAttention(nn.Module):
    """RecBole's `MultiHeadAttention` (post-LayerNorm), causal."""

    def __init__(self, config: SASRecConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.attn_dropout_prob = config.attention_probs_dropout_prob
        self.out_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, step: _CacheStep | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal attention, or with `attn_mask` (an additive mask broadcast to `[batch, heads, seq, seq]`) that mask
        instead (BERT4Rec's bidirectional attention over the non-padding items)."""
        batch, seq, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.num_heads, hidden // self.num_heads)

        dropout_p = self.attn_dropout_prob if self.training else 0.0
        query, key, value = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if step is None:
            # RecBole adds -10000 to the scores of later positions and of padding keys; with right padding an item
            # never follows padding, so at every item position that is exactly the causal mask (exp(-10000) is 0 in
            # float32)
            context = F.scaled_dot_product_attention(
                query.transpose(1, 2),
                key.transpose(1, 2),
                value.transpose(1, 2),
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=attn_mask is None,
            )
        else:  # the same over the cached items and the new ones, in their history positions
            key, value = step.append(self.layer_idx, key, value)
            context = F.scaled_dot_product_attention(
                query.transpose(1, 2),
                key.transpose(1, 2),
                value.transpose(1, 2),
                attn_mask=step.mask,
                dropout_p=dropout_p,
            )
        out = self.dense(context.transpose(1, 2).reshape(batch, seq, hidden))
        return self.LayerNorm(self.out_dropout(out) + x)


class SASRecFeedForward(nn.Module):
    """RecBole's `FeedForward` (post-LayerNorm)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.dense_1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.dense_2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dense_2(self.intermediate_act_fn(self.dense_1(x)))
        return self.LayerNorm(self.dropout(out) + x)


class SASRecLayer(nn.Module):
    """RecBole's `TransformerLayer`: attention, then the feed-forward block."""

    def __init__(self, config: SASRecConfig, layer_idx: int):
        super().__init__()
        self.multi_head_attention = SASRecAttention(config, layer_idx)
        self.feed_forward = SASRecFeedForward(config)

    def forward(
        self, x: torch.Tensor, step: _CacheStep | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.feed_forward(self.multi_head_attention(x, step, attn_mask))


class SASRecEncoder(nn.Module):
    """RecBole's `TransformerEncoder` (the `trm_encoder`)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.layer = nn.ModuleList([SASRecLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self, x: torch.Tensor, step: _CacheStep | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, step, attn_mask)
        return x


class SASRecForNextItemPrediction(SequentialRecommender):
    """SASRec with the next-item head: the score of item `i` after hidden state `h` is `h . e_i` with the item
    embedding (RecBole's `full_sort_predict`). Implements the project's recommender interface, with a cache of at
    most `max_position_embeddings` items per row (`init_cache`, `forward(..., cache_params=cache, use_cache=True)`)
    for reading step by step; evaluate it in `window` mode."""

    config: SASRecConfig
    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    _no_split_modules = ["SASRecLayer"]
    # the cache holds at most `max_position_embeddings` items: not for the stream evaluation mode (whole histories)
    bounded_cache = True

    def __init__(self, config: SASRecConfig):
        config.check_arguments()
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.num_items, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.trm_encoder = SASRecEncoder(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's: normal(0, initializer_range) for linear and embedding weights (the padding row too), zero
        # biases, LayerNorm at (1, 0)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embedding = value

    def init_cache(self, batch_size: int) -> SASRecCache:
        """A cache for `batch_size` rows that have read nothing yet."""
        config, weight = self.config, self.item_embedding.weight
        shape = (batch_size, config.max_position_embeddings, config.num_attention_heads)
        shape += (config.hidden_size // config.num_attention_heads,)
        return SASRecCache(
            [weight.new_zeros(shape) for _ in range(config.num_hidden_layers)],
            [weight.new_zeros(shape) for _ in range(config.num_hidden_layers)],
            weight.new_zeros(batch_size, config.hidden_size),
            torch.zeros(batch_size, dtype=torch.long, device=weight.device),
        )

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache_params: SASRecCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, SASRecCache | None]:
        """Hidden states `[batch, seq, hidden]` after each item, and the updated cache (with a cache or `use_cache`;
        the given cache is updated in place)."""
        limit = self.config.max_position_embeddings
        if cache_params is None and not use_cache:
            seq = input_ids.shape[1]
            if seq > limit:
                raise ValueError(
                    f"SASRec reads at most {limit} items (`max_position_embeddings`), got histories of {seq}: keep "
                    f"each row's newest {limit} items."
                )
            positions = torch.arange(seq, device=input_ids.device)
            x = self.item_embedding(input_ids) + self.position_embedding(positions)[None]
            return self.trm_encoder(self.dropout(self.LayerNorm(x))), None
        batch, seq = input_ids.shape
        if cache_params is None:
            cache_params = self.init_cache(batch)
        elif cache_params.batch_size != batch:
            raise ValueError(
                f"`input_ids` has {batch} rows but the cache holds {cache_params.batch_size}; select the cache's "
                "rows to match (`cache.select(rows)`) or start a new cache."
            )
        lengths = attention_mask.long().sum(dim=1)
        total = cache_params.seen + lengths
        if bool((total > limit).any()):
            raise ValueError(
                f"SASRec's cache holds at most {limit} items per row (`max_position_embeddings`), but a row would "
                f"reach {int(total.max())}: start a new cache and read that row's newest {limit} items."
            )
        # each input position's history position: the items already read, then this call's
        positions = cache_params.seen[:, None] + torch.arange(seq, device=input_ids.device)
        rows, columns = attention_mask.bool().nonzero(as_tuple=True)
        slots = torch.arange(limit, device=input_ids.device)
        step = _CacheStep(
            cache_params, rows, columns, positions[rows, columns], (slots <= positions[:, :, None])[:, None]
        )
        x = self.item_embedding(input_ids) + self.position_embedding(positions.clamp(max=limit - 1))
        hidden = self.trm_encoder(self.dropout(self.LayerNorm(x)), step)
        newest = hidden[torch.arange(batch, device=hidden.device), (lengths - 1).clamp(min=0)]
        cache_params.last_hidden_state = torch.where(
            (lengths > 0)[:, None],
            newest.detach().to(cache_params.last_hidden_state.dtype),
            cache_params.last_hidden_state,
        )
        cache_params.seen = total
        return hidden, cache_params


__all__ = ["NextItemOutput", "SASRecCache", "SASRecForNextItemPrediction"]
