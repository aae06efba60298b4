"""PyTorch GRU4Rec (Hidasi et al., 2016; Tan, Xu and Liu, 2016), exactly as RecBole 1.2.1 builds it, with the
project's recommender interface (`recommender.SequentialRecommender`) and an incremental cache.

    item ids -> item embedding -> dropout -> GRU (num_hidden_layers, no biases) -> Linear(hidden, embedding)
             -> scores h E^T over all items (the item embedding itself; padding excluded)

The parameter names are RecBole's (`item_embedding`, `gru_layers`, `dense`), so a RecBole GRU4Rec's `state_dict()`
loads as it is. The GRU is causal, so whole-prefix training scores every prefix of a history in one pass, and its
recurrent state is a natural cache ([`GRU4RecCache`]): reading a history in pieces with the cache gives the hidden
states of reading it whole, at any length.
"""

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import initialization as init

from .configuration_gru4rec import GRU4RecConfig
from .recommender import NextItemOutput, SequentialRecommender


class GRU4RecCache:
    """The state of [`GRU4RecForNextItemPrediction`] after the items each row has read.

    Attributes:
        hidden: `[num_hidden_layers, batch, hidden_size]` the GRU state of every layer.
        last_hidden_state: `[batch, embedding_size]` the model's hidden state after each row's newest item (what the
            next item is scored from).
        seen: `[batch]` items read per row.
    """

    def __init__(self, hidden: torch.Tensor, last_hidden_state: torch.Tensor, seen: torch.Tensor):
        self.hidden, self.last_hidden_state, self.seen = hidden, last_hidden_state, seen

    @property
    def batch_size(self) -> int:
        return self.seen.shape[0]

    def select(self, rows) -> "GRU4RecCache":
        """The cache of rows `rows` (a list or tensor of row indices), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.seen.device)
        return GRU4RecCache(self.hidden[:, rows], self.last_hidden_state[rows], self.seen[rows])

    def to(self, device=None, dtype=None) -> "GRU4RecCache":
        """The cache on `device` in floating dtype `dtype`."""
        return GRU4RecCache(
            self.hidden.to(device=device, dtype=dtype),
            self.last_hidden_state.to(device=device, dtype=dtype),
            self.seen.to(device=device),
        )


class GRU4RecForNextItemPrediction(SequentialRecommender):
    """GRU4Rec with the next-item head: the score of item `i` after hidden state `h` is `h . e_i` with the item
    embedding (RecBole's `full_sort_predict`). Implements the project's recommender interface, with a cache
    (`init_cache`, `forward(..., cache_params=cache, use_cache=True)`) for the `stream` evaluation mode and serving."""

    config: GRU4RecConfig
    config_class = GRU4RecConfig
    base_model_prefix = "gru4rec"
    _is_stateful = True

    def __init__(self, config: GRU4RecConfig):
        config.check_arguments()
        super().__init__(config)
        self.item_embedding = nn.Embedding(config.num_items, config.embedding_size, padding_idx=config.pad_token_id)
        self.emb_dropout = nn.Dropout(config.dropout_prob)
        self.gru_layers = nn.GRU(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            bias=False,
            batch_first=True,
        )
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's: Xavier normal for the item embedding (the padding row too), Xavier uniform for the first GRU
        # layer; the other GRU layers and `dense` keep PyTorch's default initialisation
        if isinstance(module, nn.Embedding):
            init.xavier_normal_(module.weight)
        elif isinstance(module, nn.GRU):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for name, param in module.named_parameters():
                if name in ("weight_ih_l0", "weight_hh_l0"):
                    init.xavier_uniform_(param)
                else:
                    init.uniform_(param, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embedding = value

    def init_cache(self, batch_size: int) -> GRU4RecCache:
        """A cache for `batch_size` rows that have read nothing yet."""
        weight = self.item_embedding.weight
        config = self.config
        return GRU4RecCache(
            weight.new_zeros(config.num_hidden_layers, batch_size, config.hidden_size),
            weight.new_zeros(batch_size, config.embedding_size),
            torch.zeros(batch_size, dtype=torch.long, device=weight.device),
        )

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache_params: GRU4RecCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, GRU4RecCache | None]:
        """Hidden states `[batch, seq, embedding]` after each item, and the updated cache (with a cache or
        `use_cache`; the given cache is updated in place)."""
        x = self.emb_dropout(self.item_embedding(input_ids))
        if cache_params is None and not use_cache:
            return self.dense(self.gru_layers(x)[0]), None
        batch, seq = input_ids.shape
        if cache_params is None:
            cache_params = self.init_cache(batch)
        elif cache_params.batch_size != batch:
            raise ValueError(
                f"`input_ids` has {batch} rows but the cache holds {cache_params.batch_size}; select the cache's "
                "rows to match (`cache.select(rows)`) or start a new cache."
            )
        lengths = attention_mask.long().sum(dim=1)
        state = cache_params.hidden.to(x.dtype)
        if bool((lengths == seq).all()):
            out, new_state = self.gru_layers(x, state)
        else:
            # ragged rows: packing stops each row's recurrence at its own last item, so the state carried on is the
            # state after that item (rows without a new item keep theirs)
            rows = (lengths > 0).nonzero().flatten()
            packed = pack_padded_sequence(x[rows], lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
            out_rows, state_rows = self.gru_layers(packed, state[:, rows].contiguous())
            out = x.new_zeros(batch, seq, self.config.hidden_size)
            out[rows] = pad_packed_sequence(out_rows, batch_first=True, total_length=seq)[0]
            new_state = state.clone()
            new_state[:, rows] = state_rows
        hidden = self.dense(out)
        newest = hidden[torch.arange(batch, device=hidden.device), (lengths - 1).clamp(min=0)]
        has_new = (lengths > 0)[:, None]
        cache_params.last_hidden_state = torch.where(
            has_new, newest.detach().to(cache_params.last_hidden_state.dtype), cache_params.last_hidden_state
        )
        cache_params.hidden = new_state.detach()
        cache_params.seen = cache_params.seen + lengths
        return hidden, cache_params


__all__ = ["GRU4RecCache", "GRU4RecForNextItemPrediction", "NextItemOutput"]
