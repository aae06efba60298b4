"""PyTorch NARM (Li et al., 2017), exactly as RecBole 1.2.1 builds it, with the project's recommender interface
(`recommender.SequentialRecommender`).

    item ids -> item embedding -> dropout -> GRU (num_hidden_layers, no biases) -> h_1 .. h_t
    c_global = h_t                                                  (the state after the newest item)
    c_local  = sum_{j <= t} alpha_tj h_j,  alpha_tj = v . sigmoid(A_1 h_j + A_2 h_t)   (not normalised, as RecBole)
    hidden   = B [c_local; c_global] (after dropout)  -> scores h E^T over all items (the item embedding itself)

The parameter names are RecBole's (`item_embedding`, `gru`, `a_1`, `a_2`, `v_t`, `b`), so a RecBole NARM's
`state_dict()` loads as it is.

RecBole's NARM reads one history and gives one representation, that of its newest item. The hidden state here after
position t is that representation for the prefix ending at t: the GRU is causal and the attention of position t
reads positions j <= t only, so one pass gives the representation of every prefix of a history (whole-prefix
training and the window evaluation use them all), each equal to running NARM on that prefix alone. That attention
is not a sum of per-position terms (the sigmoid mixes `h_j` and `h_t`), so it costs `seq^2 * hidden` per row; it is
computed a block of positions at a time to bound the memory. Dropout draws one mask per item embedding, shared by
the prefixes of a row (RecBole, with one sample per prefix, draws one per sample). NARM has no cache: evaluate it in
the `window` mode.
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from .configuration_narm import NARMConfig
from .recommender import NextItemOutput, SequentialRecommender

# elements of the largest [batch, positions, seq, hidden] block of the attention computed at once
ATTENTION_BLOCK_ELEMENTS = 1 << 23


class NARMForNextItemPrediction(SequentialRecommender):
    """NARM with the next-item head: the score of item `i` after hidden state `h` is `h . e_i` with the item
    embedding (RecBole's `full_sort_predict`). Implements the project's recommender interface without a cache
    (evaluate it in `window` mode)."""

    config: NARMConfig
    config_class = NARMConfig
    base_model_prefix = "narm"

    def __init__(self, config: NARMConfig):
        config.check_arguments()
        super().__init__(config)
        hidden = config.hidden_size
        self.item_embedding = nn.Embedding(config.num_items, config.embedding_size, padding_idx=config.pad_token_id)
        self.emb_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.gru = nn.GRU(config.embedding_size, hidden, config.num_hidden_layers, bias=False, batch_first=True)
        self.a_1 = nn.Linear(hidden, hidden, bias=False)
        self.a_2 = nn.Linear(hidden, hidden, bias=False)
        self.v_t = nn.Linear(hidden, 1, bias=False)
        self.ct_dropout = nn.Dropout(config.context_dropout_prob)
        self.b = nn.Linear(2 * hidden, config.embedding_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's: Xavier normal for the item embedding (the padding row too) and the linear layers; the GRU keeps
        # PyTorch's default initialisation
        if isinstance(module, (nn.Embedding, nn.Linear)):
            init.xavier_normal_(module.weight)
        elif isinstance(module, nn.GRU):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embedding = value

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache_params=None, use_cache: bool = False
    ) -> tuple[torch.Tensor, None]:
        """Hidden states `[batch, seq, embedding]`: after position t, NARM's representation of the prefix ending at
        t (NARM has no cache)."""
        if cache_params is not None or use_cache:
            raise ValueError(
                "NARM has no cache: pass whole histories without `cache_params`/`use_cache`, and evaluate it in "
                "`window` mode."
            )
        states = self.gru(self.emb_dropout(self.item_embedding(input_ids)))[0]  # h_j [batch, seq, hidden]
        batch, seq, hidden = states.shape
        keys, queries = self.a_1(states), self.a_2(states)  # A_1 h_j, A_2 h_t
        block = max(1, ATTENTION_BLOCK_ELEMENTS // max(1, batch * seq * hidden))
        positions = torch.arange(seq, device=states.device)
        local = []
        for t0 in range(0, seq, block):
            t1 = min(seq, t0 + block)
            # alpha[b, t, j] for the prefixes ending at t0..t1-1 over the positions j < t1
            alpha = self.v_t(torch.sigmoid(keys[:, None, :t1] + queries[:, t0:t1, None]))[..., 0]
            alpha = alpha.masked_fill(positions[None, :t1] > positions[t0:t1, None], 0.0)
            local.append(alpha @ states[:, :t1])
        context = torch.cat([torch.cat(local, dim=1), states], dim=-1)  # [c_local; c_global]
        return self.b(self.ct_dropout(context)), None


__all__ = ["NARMForNextItemPrediction", "NextItemOutput"]
