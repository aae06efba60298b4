"""GRU4Rec model configuration (Hidasi et al., 2016; Tan, Xu and Liu, 2016), as RecBole 1.2.1 builds it."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .losses import document_loss_settings
from .recommender import check_settings


@document_loss_settings
@strict
class GRU4RecConfig(PreTrainedConfig):
    r"""
    Configuration of [`GRU4RecForNextItemPrediction`]: a GRU over the item embeddings, the architecture of RecBole
    1.2.1's `GRU4Rec`. The defaults are the settings of the TTT4Rec paper's runs: RecBole's model defaults overlaid
    with the official TTT4Rec repository's `config.yaml`, which sets `hidden_size: 64` and `dropout_prob: 0.2`
    (RecBole's own defaults: 128 and 0.3).

    Args:
        num_items (`int`, *optional*, defaults to 10673):
            Size of the item vocabulary, **padding id included** (RecBole's `n_items`).
        embedding_size (`int`, *optional*, defaults to 64):
            Dimension of the item embeddings, which are also what items are scored against (RecBole: 64).
        hidden_size (`int`, *optional*, defaults to 64):
            Width of the GRU state (RecBole's own default: 128).
        num_hidden_layers (`int`, *optional*, defaults to 1):
            Number of stacked GRU layers (RecBole's `num_layers`: 1); the GRU has no biases, as RecBole's.
        dropout_prob (`float`, *optional*, defaults to 0.2):
            Dropout of the item embeddings before the GRU (RecBole's own default: 0.3).
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id (RecBole's is 0). It never receives probability.
        [loss settings]
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the model returns a [`GRU4RecCache`] (the recurrent state) when asked to with `use_cache=True`.
    """

    model_type = "gru4rec"
    keys_to_ignore_at_inference = ["cache_params"]
    attribute_map = {"vocab_size": "num_items"}

    num_items: int = 10673
    embedding_size: int = 64
    hidden_size: int = 64
    num_hidden_layers: int = 1
    dropout_prob: float = 0.2
    pad_token_id: int | None = 0
    loss_type: str = "full_ce"
    num_negatives: int = 4
    negative_sampler: str = "uniform"
    in_batch_negatives: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        self.check_arguments()
        super().__post_init__(**kwargs)

    def check_arguments(self) -> None:
        """Raise a `ValueError` naming the argument for any setting the model cannot be built with."""
        check_settings(self, ("embedding_size", "hidden_size", "num_hidden_layers"), ("dropout_prob",))


__all__ = ["GRU4RecConfig"]
