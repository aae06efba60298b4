"""BERT4Rec model configuration (Sun et al., 2019), as RecBole 1.2.1 builds it."""

from huggingface_hub.dataclasses import strict

from .configuration_sasrec import SASRecConfig
from .losses import document_loss_settings


@document_loss_settings
@strict
class BERT4RecConfig(SASRecConfig):
    r"""
    Configuration of [`BERT4RecForNextItemPrediction`]: sequential recommendation with a bidirectional Transformer
    trained to fill in masked items (Sun et al., 2019), the architecture of RecBole 1.2.1's `BERT4Rec`. The defaults
    are the settings of the TTT4Rec paper's runs: RecBole's model defaults overlaid with the official TTT4Rec
    repository's `config.yaml` (hidden size 64, CE loss; its `dropout_prob: 0.2` is not a BERT4Rec setting); for
    BERT4Rec they are RecBole's own defaults. Its Transformer settings are SASRec's (it uses SASRec's layers), with
    BERT4Rec's dropout defaults, plus its masking settings.

    Args:
        num_items (`int`, *optional*, defaults to 10673):
            Size of the item vocabulary, **padding id included** (RecBole's `n_items`). The mask token is one more
            id, `num_items` (`mask_token_id`): the item embedding has `num_items + 1` rows.
        max_position_embeddings (`int`, *optional*, defaults to 50):
            Number of learned absolute positions: the longest history the model reads (RecBole's
            `MAX_ITEM_LIST_LENGTH`). The trainer sets it to the data set's maximum history length `L`.
        hidden_size (`int`, *optional*, defaults to 64):
            Dimension of the item and position embeddings and of the hidden states (RecBole: 64).
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Number of Transformer layers (RecBole's `n_layers`: 2).
        num_attention_heads (`int`, *optional*, defaults to 2):
            Attention heads per layer (RecBole's `n_heads`: 2).
        intermediate_size (`int`, *optional*, defaults to 256):
            Inner width of the feed-forward block (RecBole's `inner_size`: 256).
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward block (RecBole: `gelu`, the exact erf form).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.2):
            Dropout of the embeddings and of each sub-layer's output (RecBole: 0.2).
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.2):
            Dropout of the attention probabilities (RecBole's `attn_dropout_prob`: 0.2).
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of every LayerNorm (RecBole: 1e-12).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the linear and embedding layers (RecBole: 0.02).
        mask_ratio (`float`, *optional*, defaults to 0.2):
            Probability that a training history's item is replaced by the mask token; at most
            `int(mask_ratio * max_position_embeddings)` masked items of a history are targets (RecBole: 0.2).
        ft_ratio (`float`, *optional*, defaults to 0.5):
            Probability that a training batch is made of fine-tuning samples instead, each history with only its
            newest item masked (RecBole: 0.5).
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id (RecBole's is 0). It never receives probability.
        [loss settings]
    """

    model_type = "bert4rec"

    hidden_dropout_prob: float = 0.2
    attention_probs_dropout_prob: float = 0.2
    mask_ratio: float = 0.2
    ft_ratio: float = 0.5

    @property
    def mask_token_id(self) -> int:
        """The id of the mask token (RecBole's `n_items`): one past the items."""
        return self.num_items

    @property
    def max_masked_targets(self) -> int:
        """At most this many masked items of a training history are targets (RecBole's `mask_item_length`)."""
        return int(self.mask_ratio * self.max_position_embeddings)

    def check_arguments(self) -> None:
        """Raise a `ValueError` naming the argument for any setting the model cannot be built with."""
        super().check_arguments()
        if not 0.0 < self.mask_ratio < 1.0 or self.max_masked_targets < 1:
            raise ValueError(
                f"`mask_ratio` ({self.mask_ratio}) must be in (0, 1) and leave at least one target per history: "
                f"int(mask_ratio * max_position_embeddings) = {self.max_masked_targets}; raise it."
            )
        if not 0.0 <= self.ft_ratio <= 1.0:
            raise ValueError(f"`ft_ratio` must be in [0, 1], got {self.ft_ratio}.")


__all__ = ["BERT4RecConfig"]
