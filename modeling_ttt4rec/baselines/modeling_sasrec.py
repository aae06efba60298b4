"""PyTorch SASRec (Kang and McAuley, 2018), exactly as RecBole 1.2.1 builds it, with the project's recommender
interface (`recommender.SequentialRecommender`).

    item ids -> item embedding + learned absolute position embedding -> LayerNorm -> dropout
             -> num_hidden_layers x [ causal multi-head self-attention -> dropout -> + residual -> LayerNorm
                                      -> Linear -> act -> Linear -> dropout -> + residual -> LayerNorm ]
             -> scores h E^T over all items (the item embedding itself; padding excluded)

The parameter names are RecBole's (`item_embedding`, `position_embedding`, `trm_encoder.layer.N.multi_head_attention
.query`, ...), so a RecBole SASRec's `state_dict()` loads as it is. Positions count from each row's first item
(histories are right-padded, as in RecBole); attention is causal, so whole-prefix training scores every prefix of a
history in one pass. SASRec has no cache: it reads at most `max_position_embeddings` items, whole, each time.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_sasrec import SASRecConfig
from .recommender import NextItemOutput, SequentialRecommender


class SASRecAttention(nn.Module):
    """RecBole's `MultiHeadAttention` (post-LayerNorm), causal."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.attn_dropout_prob = config.attention_probs_dropout_prob
        self.out_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.num_heads, hidden // self.num_heads).transpose(1, 2)

        # RecBole adds -10000 to the scores of later positions and of padding keys; with right padding an item never
        # follows padding, so at every item position that is exactly the causal mask (exp(-10000) is 0 in float32)
        context = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            dropout_p=self.attn_dropout_prob if self.training else 0.0,
            is_causal=True,
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

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.multi_head_attention = SASRecAttention(config)
        self.feed_forward = SASRecFeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.multi_head_attention(x))


class SASRecEncoder(nn.Module):
    """RecBole's `TransformerEncoder` (the `trm_encoder`)."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.layer = nn.ModuleList([SASRecLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class SASRecForNextItemPrediction(SequentialRecommender):
    """SASRec with the next-item head: the score of item `i` after hidden state `h` is `h . e_i` with the item
    embedding (RecBole's `full_sort_predict`). Implements the project's recommender interface without a cache
    (evaluate it in `window` mode)."""

    config: SASRecConfig
    config_class = SASRecConfig
    base_model_prefix = "sasrec"
    _no_split_modules = ["SASRecLayer"]

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

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache_params=None, use_cache: bool = False
    ) -> tuple[torch.Tensor, None]:
        """Hidden states `[batch, seq, hidden]` after each item (SASRec has no cache)."""
        if cache_params is not None or use_cache:
            raise ValueError(
                "SASRec has no cache: pass whole histories (at most `max_position_embeddings` items) without "
                "`cache_params`/`use_cache`, and evaluate it in `window` mode."
            )
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"SASRec reads at most {self.config.max_position_embeddings} items (`max_position_embeddings`), got "
                f"histories of {seq}: keep each row's newest {self.config.max_position_embeddings} items."
            )
        positions = torch.arange(seq, device=input_ids.device)
        x = self.item_embedding(input_ids) + self.position_embedding(positions)[None]
        return self.trm_encoder(self.dropout(self.LayerNorm(x))), None


__all__ = ["NextItemOutput", "SASRecForNextItemPrediction"]
