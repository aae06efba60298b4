"""NARM model configuration (Li et al., 2017), as RecBole 1.2.1 builds it."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .losses import document_loss_settings
from .recommender import check_settings


@document_loss_settings
@strict
class NARMConfig(PreTrainedConfig):
    r"""
    Configuration of [`NARMForNextItemPrediction`]: the neural attentive recommendation machine (Li et al., 2017), the
    architecture of RecBole 1.2.1's `NARM`. The defaults are the settings of the TTT4Rec paper's runs: RecBole's model
    defaults overlaid with the official TTT4Rec repository's `config.yaml`, which sets `hidden_size: 64` (RecBole's
    own default: 128; its `dropout_prob: 0.2` is not a NARM setting, NARM keeps its `dropout_probs: [0.25, 0.5]`).

    Args:
        num_items (`int`, *optional*, defaults to 10673):
            Size of the item vocabulary, **padding id included** (RecBole's `n_items`).
        embedding_size (`int`, *optional*, defaults to 64):
            Dimension of the item embeddings, which are also what items are scored against (RecBole: 64).
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the GRU state and of the attention (RecBole's own default: 128).
        num_hidden_layers (`int`, *optional*, defaults to 1):
            Number of stacked GRU layers (RecBole's `n_layers`: 1); the GRU has no biases, as RecBole's.
        embedding_dropout_prob (`float`, *optional*, defaults to 0.25):
            Dropout of the item embeddings before the GRU (RecBole's `dropout_probs[0]`: 0.25).
        context_dropout_prob (`float`, *optional*, defaults to 0.5):
            Dropout of the concatenated local and global representation before the bilinear projection (RecBole's
            `dropout_probs[1]`: 0.5).
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id (RecBole's is 0). It never receives probability.
        [loss settings]
    """

    model_type = "narm"
    attribute_map = {"vocab_size": "num_items"}

    num_items: int = 10673
    embedding_size: int = 64
    hidden_size: int = 64
    num_hidden_layers: int = 1
    embedding_dropout_prob: float = 0.25
    context_dropout_prob: float = 0.5
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
        sizes = ("embedding_size", "hidden_size", "num_hidden_layers")
        check_settings(self, sizes, ("embedding_dropout_prob", "context_dropout_prob"))


__all__ = ["NARMConfig"]
