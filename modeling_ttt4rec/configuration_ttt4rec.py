"""TTT4Rec model configuration."""

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .losses import check_loss_settings, document_loss_settings

BACKBONES = ("transformer", "mamba")
TTT_LAYER_TYPES = ("linear", "mlp")
ITEM_SCORINGS = ("embedding", "target_mlp")


def _ints_as_floats(cls):
    """Accept an int where a field is a float (`rope_theta=10000`, a hand-edited `config.json`), stored as a float;
    the strict type check of every other value is kept."""
    floats = {f.name for f in dataclasses.fields(cls) if f.type in (float, "float")}
    strict_setattr = cls.__setattr__

    def __setattr__(self, name, value):
        if name in floats and type(value) is int:
            value = float(value)
        strict_setattr(self, name, value)

    cls.__setattr__ = __setattr__
    return cls


@document_loss_settings
@_ints_as_floats
@strict
class TTT4RecConfig(PreTrainedConfig):
    r"""
    Configuration of a TTT4Rec model ([`TTT4RecModel`], [`TTT4RecForNextItemPrediction`]): sequential
    recommendation whose sequence layer is a Test-Time Training (TTT) layer (Yang, Wang and Ge, 2024). The
    defaults are the paper's (and its official code's) settings.

    Args:
        num_items (`int`, *optional*, defaults to 10673):
            Size of the item vocabulary, **padding id included**: real items have ids `1 .. num_items - 1`. Also
            readable and settable as `vocab_size` (what `resize_token_embeddings` sets).
        hidden_size (`int`, *optional*, defaults to 64):
            Dimension of the item embeddings and hidden states (the paper's embedding size `D`).
        intermediate_size (`int`, *optional*, defaults to 256):
            Inner width of the SwiGLU feed-forward block of each residual block.
        num_hidden_layers (`int`, *optional*, defaults to 1):
            Number of residual blocks.
        num_attention_heads (`int`, *optional*, defaults to 4):
            Number of TTT heads; each head has its own inner model over `hidden_size // num_attention_heads` features.
        backbone (`str`, *optional*, defaults to `"transformer"`):
            Sequence-modeling block: `"transformer"` (Q, K, V projections -> TTT) or `"mamba"` (shared Q/K projection
            with two causal depthwise convolutions, an input convolution before the block and a GELU gate).
        ttt_layer_type (`str`, *optional*, defaults to `"mlp"`):
            Inner model `f(.; W)` of the TTT layer: `"linear"` (`W1, b1`) or `"mlp"` (`W1, b1, GELU, W2, b2`).
        ttt_mlp_expansion (`int`, *optional*, defaults to 4):
            Inner width of the `"mlp"` inner model, as a multiple of the head dimension.
        mini_batch_size (`int`, *optional*, defaults to 8):
            Tokens per inner-loop mini-batch: all gradients inside a mini-batch are taken at the weights from the end
            of the previous one. `1` is plain online gradient descent.
        ttt_base_lr (`float`, *optional*, defaults to 1.0):
            Base inner learning rate; the per-token rate is `ttt_base_lr * sigmoid(x w + b) / head_dim`.
        rope_theta (`float`, *optional*, defaults to 1000.0):
            Base of the rotary position embedding applied to Q and K at the position inside the mini-batch.
        conv_kernel (`int`, *optional*, defaults to 4):
            Kernel size of the causal depthwise convolutions of the `"mamba"` backbone.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the SwiGLU feed-forward block.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.2):
            Dropout applied to the item embeddings (before their LayerNorm).
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the LayerNorm after the item embeddings.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the RMSNorms of the residual blocks and of the final norm.
        ttt_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the LayerNorm inside the inner model and of the LayerNorm after the TTT layer.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the linear layers, the item embeddings, the inner
            weights `W1` (`W2`) and the inner learning-rate gate (at the default 0.02 the official code's
            initialisation: it fixes the last two at 0.02). The inner biases start at 0, the convolutions at
            PyTorch's default.
        pad_token_id (`int`, *optional*, defaults to 0):
            The padding item id. It never receives probability.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Score items with the item embedding matrix itself (`logits = h E^T`), as the official code does (the
            paper's text writes a separate matrix `M`). `item_scoring="target_mlp"` requires it: the target tower
            reads the input embedding table.
        item_scoring (`str`, *optional*, defaults to `"embedding"`):
            How an item is scored from the user's hidden state `h`: `"embedding"` is `h . e_i` with the (tied) item
            embedding (Yang, Wang and Ge, 2024); `"target_mlp"` is `h . MLP(e_i)`, the target item's embedding passed
            through a two-layer MLP, the "target tower" of Zhan, Lv, Zhang and Li (2025).
        target_mlp_size (`int`, *optional*, defaults to 128):
            Inner width of the `"target_mlp"` tower `Linear(hidden, target_mlp_size) -> ReLU -> Linear(.., hidden)`.
            Unused with `item_scoring="embedding"`.
        [loss settings]
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the model returns a [`TTT4RecCache`] (the inner-loop states) when not training.

    Example:

    ```python
    >>> from modeling_ttt4rec import TTT4RecConfig, TTT4RecForNextItemPrediction

    >>> config = TTT4RecConfig(num_items=1001, backbone="mamba", ttt_layer_type="linear")
    >>> model = TTT4RecForNextItemPrediction(config)

    >>> # the second paper's model: one TTT-Linear block, items scored through a target MLP tower
    >>> config = TTT4RecConfig(num_items=1001, ttt_layer_type="linear", item_scoring="target_mlp")
    ```
    """

    model_type = "ttt4rec"
    keys_to_ignore_at_inference = ["cache_params"]
    # the item vocabulary is transformers' `vocab_size` (e.g. `resize_token_embeddings` sets it)
    attribute_map = {"vocab_size": "num_items"}

    num_items: int = 10673
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 1
    num_attention_heads: int = 4
    backbone: str = "transformer"
    ttt_layer_type: str = "mlp"
    ttt_mlp_expansion: int = 4
    mini_batch_size: int = 8
    ttt_base_lr: float = 1.0
    rope_theta: float = 1000.0
    conv_kernel: int = 4
    hidden_act: str = "silu"
    hidden_dropout_prob: float = 0.2
    layer_norm_eps: float = 1e-12
    rms_norm_eps: float = 1e-6
    ttt_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    item_scoring: str = "embedding"
    target_mlp_size: int = 128
    loss_type: str = "full_ce"
    num_negatives: int = 4
    negative_sampler: str = "uniform"
    in_batch_negatives: bool = False
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        self.check_arguments()
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def check_arguments(self) -> None:
        """Raise a `ValueError` naming the argument for any setting the model cannot be built with (run when the
        config is made and again when a model is built from it)."""
        positive = ("num_items", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for name in (
            *positive,
            "mini_batch_size",
            "conv_kernel",
            "ttt_mlp_expansion",
            "target_mlp_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.num_items < 2:
            raise ValueError(f"`num_items` counts the padding id and must be >= 2, got {self.num_items}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"The head dimension `hidden_size // num_attention_heads` ({self.head_dim}) must be even for the "
                "rotary position embedding."
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown `backbone` {self.backbone!r}; choose one of {BACKBONES}.")
        if self.ttt_layer_type not in TTT_LAYER_TYPES:
            raise ValueError(f"Unknown `ttt_layer_type` {self.ttt_layer_type!r}; choose one of {TTT_LAYER_TYPES}.")
        if self.item_scoring not in ITEM_SCORINGS:
            raise ValueError(f"Unknown `item_scoring` {self.item_scoring!r}; choose one of {ITEM_SCORINGS}.")
        check_loss_settings(self)
        for name in ("ttt_base_lr", "rope_theta", "layer_norm_eps", "rms_norm_eps", "ttt_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"`initializer_range` (a standard deviation) must be >= 0, got {self.initializer_range}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"Unknown `hidden_act` {self.hidden_act!r}; use an activation of transformers' ACT2FN.")
        if not 0.0 <= self.hidden_dropout_prob < 1.0:
            raise ValueError(f"`hidden_dropout_prob` must be in [0, 1), got {self.hidden_dropout_prob}.")
        if self.item_scoring == "target_mlp" and not self.tie_word_embeddings:
            raise ValueError(
                "`item_scoring='target_mlp'` passes the input item embeddings through the target tower (one table "
                "for input and target items, as in Zhan et al.); it needs `tie_word_embeddings=True`."
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.num_items:
            raise ValueError(f"`pad_token_id` ({self.pad_token_id}) must be an item id in [0, {self.num_items}).")


__all__ = ["TTT4RecConfig"]
