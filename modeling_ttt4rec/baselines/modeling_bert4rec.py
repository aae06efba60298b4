"""PyTorch BERT4Rec (Sun et al., 2019), exactly as RecBole 1.2.1 builds it, with the project's recommender interface
(`recommender.SequentialRecommender`).

    item ids (the mask token: id num_items) -> item embedding + learned absolute position embedding -> LayerNorm
             -> dropout -> SASRec's Transformer layers with bidirectional attention over the non-padding items
             -> Linear -> GELU -> LayerNorm = h
             -> scores h . e_i + b_i over all items (the item embedding itself and RecBole's `output_bias`)

The parameter names are RecBole's (`item_embedding`, `position_embedding`, `trm_encoder.layer.N...`, `output_ffn`,
`output_ln`, `output_bias`), so a RecBole BERT4Rec's `state_dict()` loads as it is. The Transformer layers are
SASRec's (`modeling_sasrec`), with a padding mask instead of the causal one.

**Scoring.** The hidden states this model returns end with a constant 1 (`[h, 1]`) and its `item_features()` are
`[e_i, b_i]`, so `h . e_i + b_i` is one dot product: the recommender interface's scoring, loss and candidate scoring
apply unchanged.

**Reading histories** (evaluation and scoring): attention is bidirectional, so the hidden state after item t must be
computed from the prefix ending at t alone. It is RecBole's test-time representation of that prefix
(`reconstruct_test_data`): the prefix **without its first item**, the mask token appended, BERT4Rec's output at the
mask token. RecBole always drops a history's first item there (it shifts the padded history left by one to make room
for the mask token), also when the history is shorter than `max_position_embeddings`; this model does the same, so
the scores equal RecBole's. Every prefix is one sequence of the encoder: a history of `T` items costs `T` encoder
passes (sorted by length and computed in blocks of rows, to bound the memory and the padding). Where only the newest
readout of each history is needed, `newest_hidden_state` computes that one alone: the window evaluation asks for it
(one window per sample: the recommender interface's `newest_hidden_state`), and so does `recommend`. BERT4Rec has no
cache: evaluate it in `window` mode. Which of the two readings applies (below) is decided per call from the input,
one synchronisation with the device.

**Masked input** (training): `input_ids` that hold the mask token are read as they are, one bidirectional pass; the
hidden state at a masked position predicts the item there (`labels` at that position). `training_batch` turns the
trainer's batches into RecBole's training samples (see there).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_bert4rec import BERT4RecConfig
from .modeling_sasrec import SASRecEncoder, SASRecForNextItemPrediction
from .recommender import NextItemOutput, SequentialRecommender
from .recommender_head import Recommendations

# tokens * hidden of the largest block of prefix sequences encoded at once when reading histories
PREFIX_BLOCK_ELEMENTS = 1 << 23


def mask_histories(
    histories: torch.Tensor,
    lengths: torch.Tensor,
    draws: torch.Tensor | None,
    mask_token_id: int,
    mask_ratio: float,
    max_targets: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RecBole's training transform of BERT4Rec (`recbole.data.transform.MaskItemSequence`) on right-padded
    `histories` `[N, T]` of `lengths` `[N]` items: the masked histories and the target mask `[N, T]` (the targets are
    `histories[target_mask]`).

    With `draws` `[N, T]` (uniform in [0, 1)), every item whose draw is below `mask_ratio` is replaced by the mask
    token and the last `max_targets` masked positions of each history are its targets; without (`None`: a fine-tuning
    batch) each history's newest item is masked and is the target. As in RecBole, position 0 is never a target (its
    index, 0, is RecBole's padding value of the list of masked positions), though it is masked.
    """
    positions = torch.arange(histories.shape[1], device=histories.device)
    items = positions < lengths[:, None]
    if draws is None:
        masked = positions == (lengths[:, None] - 1)
        targets = masked
    else:
        masked = items & (draws < mask_ratio)
        # the number of masked positions at or after each position: the last `max_targets` have at most that many
        from_right = masked.flip(1).cumsum(1).flip(1)
        targets = masked & (from_right <= max_targets)
    return histories.masked_fill(masked, mask_token_id), targets & (positions > 0)


class BERT4RecForNextItemPrediction(SequentialRecommender):
    """BERT4Rec with the next-item head: the score of item `i` after a history is `h . e_i + b_i` with `h` the output
    at a mask token appended to the history (RecBole's `full_sort_predict`). Implements the project's recommender
    interface without a cache (evaluate it in `window` mode), plus `training_batch` (RecBole's masked training
    samples)."""

    config: BERT4RecConfig
    config_class = BERT4RecConfig
    base_model_prefix = "bert4rec"
    _no_split_modules = ["SASRecLayer"]

    def __init__(self, config: BERT4RecConfig):
        config.check_arguments()
        super().__init__(config)
        hidden = config.hidden_size
        # one more row than the items: the mask token
        self.item_embedding = nn.Embedding(config.num_items + 1, hidden, padding_idx=config.pad_token_id)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, hidden)
        self.trm_encoder = SASRecEncoder(config)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.output_ffn = nn.Linear(hidden, hidden)
        self.output_gelu = nn.GELU()
        self.output_ln = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(config.num_items))
        self.post_init()

    # RecBole initialises BERT4Rec as SASRec (the output bias starts at zero, as built)
    _init_weights = SASRecForNextItemPrediction._init_weights

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embedding = value

    def item_features(self, item_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """`[e_i, b_i]`: the item embedding (not the mask token's) with the output bias as a last feature, `[...,
        hidden + 1]` for `item_ids`, or `[num_items, hidden + 1]` for all items (the padding id's row included)."""
        weight = torch.cat([self.item_embedding.weight[: self.config.num_items], self.output_bias[:, None]], dim=1)
        return weight if item_ids is None else F.embedding(item_ids, weight)

    @property
    def num_input_ids(self) -> int:
        """`input_ids` may hold the mask token (masked input, `num_items`); candidates and targets may not."""
        return self.config.num_items + 1

    def _other_input_ids(self) -> str:
        return f" or the mask token {self.config.mask_token_id}"

    def recommend(self, input_ids: torch.LongTensor | None = None, *args, **kwargs) -> Recommendations:
        """The head's `recommend` (`RecommenderHeadMixin.recommend`, the same arguments) for histories of items: the
        model appends the mask token itself (RecBole's test-time reading), so `input_ids` may not hold it."""
        if isinstance(input_ids, torch.Tensor) and bool((input_ids == self.config.mask_token_id).any()):
            raise ValueError(
                f"`recommend` reads histories of items, but `input_ids` holds the mask token "
                f"{self.config.mask_token_id}: pass the history without it (the model appends it to read a history)."
            )
        return super().recommend(input_ids, *args, **kwargs)

    def _read_newest(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        cache_params: None,
        item_chunk_size: int | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The head's `_read_newest` (inputs already checked) with one readout per row, its newest, where `forward`
        would read every prefix."""
        newest = self.newest_hidden_state(input_ids, attention_mask, check_inputs=False)
        return (self.score_items(newest), None) if item_chunk_size is None else (None, newest)

    def newest_hidden_state(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, check_inputs: bool = True
    ) -> torch.Tensor:
        """`[batch, hidden + 1]`: the hidden state after each row's newest item (`[h, 1]`), the same as `forward`'s
        `last_hidden_state` there, computing only that readout (one encoder pass per row instead of one per prefix;
        the recommender interface's `newest_hidden_state`). `input_ids` are right-padded histories of items;
        `check_inputs=False` skips the checks that read the values."""
        if check_inputs:
            attention_mask = self.validate_inputs(input_ids, attention_mask)
            if bool((input_ids == self.config.mask_token_id).any()):
                raise ValueError(
                    f"`newest_hidden_state` reads histories of items, but `input_ids` holds the mask token "
                    f"{self.config.mask_token_id}: pass the history without it."
                )
        else:
            attention_mask = self._check_shapes(input_ids, attention_mask)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        hidden = self._readouts(input_ids, rows, attention_mask.long().sum(dim=1) - 1)
        return torch.cat([hidden, hidden.new_ones(hidden.shape[:-1] + (1,))], dim=-1)

    def _bert(self, input_ids: torch.Tensor) -> torch.Tensor:
        """RecBole's `BERT4Rec.forward`: the output `[batch, seq, hidden]` at every position of right-padded
        `input_ids`, attention bidirectional over the non-padding ids."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.dropout(self.LayerNorm(self.item_embedding(input_ids) + self.position_embedding(positions)[None]))
        # RecBole's additive mask: -10000 for padding keys, broadcast over the heads and queries
        keys = (input_ids != self.config.pad_token_id)[:, None, None, :]
        attn_mask = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, -10000.0)
        return self.output_ln(self.output_gelu(self.output_ffn(self.trm_encoder(x, attn_mask=attn_mask))))

    def _prefix_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[batch, seq, hidden]`: after each item t, the output at the mask token of RecBole's test-time sequence of
        the prefix ending at t (its items 1..t, then the mask token; see the module docstring)."""
        rows, ends = attention_mask.bool().nonzero(as_tuple=True)  # one sequence per (row, last position)
        states = self._readouts(input_ids, rows, ends)
        out = states.new_zeros(input_ids.shape + (self.config.hidden_size,))
        return out.index_put((rows, ends), states)

    def _readouts(self, input_ids: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """`[len(rows), hidden]`: for each prefix of `input_ids` (right-padded histories of items) given by its row
        and last position (`rows`, `ends`), the output at the mask token of RecBole's test-time sequence of it (its
        items 1..t, then the mask token). The sequences are encoded longest first, in blocks of at most
        `PREFIX_BLOCK_ELEMENTS` tokens x hidden, each padded to its own longest sequence."""
        pad, positions = self.config.pad_token_id, torch.arange(input_ids.shape[1], device=input_ids.device)
        shifted = F.pad(input_ids[:, 1:], (0, 1), value=pad)  # each row without its first item
        order = torch.argsort(ends, descending=True, stable=True)
        widths = (ends[order] + 1).tolist()  # each sequence's length with its mask token (one synchronisation)
        out = torch.zeros(len(rows), self.config.hidden_size, dtype=self.output_ln.weight.dtype, device=rows.device)
        begin = 0
        while begin < len(widths):
            width = widths[begin]  # the longest sequence of the block
            end = begin + max(1, PREFIX_BLOCK_ELEMENTS // (width * self.config.hidden_size))
            index = order[begin:end]
            r, t = rows[index], ends[index]
            prefix = shifted[r, :width].masked_fill(positions[:width] >= t[:, None], pad)
            prefix = prefix.masked_fill(positions[:width] == t[:, None], self.config.mask_token_id)
            out[index] = self._bert(prefix)[torch.arange(len(index), device=r.device), t].to(out.dtype)
            begin = end
        return out

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache_params=None, use_cache: bool = False
    ) -> tuple[torch.Tensor, None]:
        """Hidden states `[batch, seq, hidden + 1]` (`[h, 1]`, see the module docstring): after each item of a history,
        the representation of the prefix ending there; for input holding the mask token, the output at each
        position of one bidirectional pass (BERT4Rec has no cache)."""
        if cache_params is not None or use_cache:
            raise ValueError(
                "BERT4Rec has no cache: pass whole histories without `cache_params`/`use_cache`, and evaluate it in "
                "`window` mode."
            )
        if bool((input_ids == self.config.mask_token_id).any()):
            hidden = self._bert(input_ids.masked_fill(attention_mask == 0, self.config.pad_token_id))
        else:
            hidden = self._prefix_states(input_ids, attention_mask)
        return torch.cat([hidden, hidden.new_ones(hidden.shape[:-1] + (1,))], dim=-1), None

    def training_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """RecBole's training samples of BERT4Rec for a collated training batch (the trainer's hook, see
        `register_model`): one history per target of `batch` (the items before it, `input_ids[row, :p + 1]` for a
        target after position p), transformed as RecBole's data loader does (`mask_histories`): with probability
        `ft_ratio` the whole batch holds fine-tuning samples (each history's newest item masked), otherwise every
        item is masked with probability `mask_ratio`. As in RecBole, a sample's own target is not part of its
        history: a user's last training item is never a masked target. Returns the keys the loss reads
        (`input_ids`, `attention_mask`, `target_mask`, `targets`: the masked items at their positions)."""
        ids = batch["input_ids"]
        rows, ends = batch["target_mask"].nonzero(as_tuple=True)
        lengths = ends + 1
        positions = torch.arange(ids.shape[1], device=ids.device)
        histories = ids[rows].masked_fill(positions >= lengths[:, None], self.config.pad_token_id)
        fine_tune = bool(torch.rand((), generator=generator, device=ids.device) < self.config.ft_ratio)
        draws = None if fine_tune else torch.rand(histories.shape, generator=generator, device=ids.device)
        config = self.config
        masked, target_mask = mask_histories(
            histories, lengths, draws, config.mask_token_id, config.mask_ratio, config.max_masked_targets
        )
        return {
            "input_ids": masked,
            "attention_mask": (positions < lengths[:, None]).long(),
            "target_mask": target_mask,
            "targets": histories[target_mask],
        }


__all__ = ["BERT4RecForNextItemPrediction", "NextItemOutput", "mask_histories"]
