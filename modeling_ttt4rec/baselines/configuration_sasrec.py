"""SASRec model configuration (Kang and McAuley, 2018), as RecBole 1.2.1 builds it."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .losses import document_loss_settings
from .recommender import check_settings


@document_loss_settings
@strict
class SASRecConfig(PreTrainedConfig):
    r"""
    Configuration of [`SASRecForNextItemPrediction`]: self-attentive sequential recommendation (Kang and McAuley,
    2018), the architecture of RecBole 1.2.1's `SASRec`. The defaults are the settings of the TTT4Rec paper's runs:
    RecBole's model defaults overlaid with the official TTT4Rec repository's `config.yaml` (hidden size 64, CE loss);
    for SASRec they are RecBole's own defaults.

    Args:
        num_items (`int`, *optional*, defaults to 10673):
            Size of the item vocabulary, **padding id included** (RecBole's `n_items`).
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
        hidden_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout of the embeddings and of each sub-layer's output (RecBole: 0.5).
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout of the attention probabilities (RecBole's `attn_dropout_prob`: 0.5).
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of every LayerNorm (RecBole: 1e-12).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the linear and embedding layers (RecBole: 0.02).
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id (RecBole's is 0). It never receives probability.
        [loss settings]
    """

    model_type = "sasrec"
    attribute_map = {"vocab_size": "num_items"}

    num_items: int = 10673
    max_position_embeddings: int = 50
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.5
    attention_probs_dropout_prob: float = 0.5
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    loss_type: str = "full_ce"
    num_negatives: int = 4
    negative_sampler: str = "uniform"
    in_batch_negatives: bool = False

    def __post_init__(self, **kwargs):
        self.check_arguments()
        super().__post_init__(**kwargs)

    def check_arguments(self) -> None:
        """Raise a `ValueError` naming the argument for any setting the model cannot be built with."""
        sizes = ("max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads")
        check_settings(self, sizes, ("hidden_dropout_prob", "attention_probs_dropout_prob"))
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"Unknown `hidden_act` {self.hidden_act!r}; use an activation of transformers' ACT2FN.")


__all__ = ["SASRecConfig"]
