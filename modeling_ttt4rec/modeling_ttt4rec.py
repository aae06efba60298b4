"""PyTorch TTT4Rec: sequential recommendation with Test-Time Training layers (Yang, Wang and Ge, 2024).

Architecture (as the official code that produced the paper's numbers builds it):

    item ids -> embedding E -> dropout -> LayerNorm
             -> num_hidden_layers x [ RMSNorm -> sequence-modeling block -> + residual
                                      -> RMSNorm -> SwiGLU feed-forward -> + residual ]
             -> RMSNorm -> scores h E^T over all items (padding excluded)

With `item_scoring="target_mlp"` (Zhan, Lv, Zhang and Li, 2025) an item is scored as `h . MLP(e_i)` instead: the
target item's embedding (the same table) goes through a two-layer "target tower" first.

The sequence-modeling block projects the input to the TTT views and runs the TTT layer (`ttt.py`):

* `transformer` backbone: XQ, XK, XV = linear projections -> TTT -> LayerNorm -> output projection;
* `mamba` backbone: a causal depthwise convolution with residual before the block; XQ and XK share one projection
  followed by one causal depthwise convolution each; the TTT output is gated by `gelu(g(x))`.

`TTT4RecForNextItemPrediction` implements the project's recommender interface (its docstring lists it): the model
computes its own training loss (`config.loss_type`) and scores items (`score_items`, `score_candidates`); the trainer
and the evaluator use nothing else.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .cache import CONV_NAMES, TTT4RecCache, cache_config_dict, check_cache_type, check_config
from .configuration_ttt4rec import TTT4RecConfig
from .recommender_head import (
    Recommendations,
    RecommenderHeadMixin,
    at_least_float32,
    check_cache_placement,
    default_attention_mask,
)
from .ttt import InnerState, TTTLayer

# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TTT4RecModelOutput(ModelOutput):
    """Output of [`TTT4RecModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Hidden states after the final norm, at every position (positions after a row's last item are padding).
        cache_params ([`TTT4RecCache`], *optional*, returned with `use_cache=True`):
            The inner-loop states after the last item of each row; pass it back with the next items.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The embeddings and the output of each residual block, each `(batch_size, sequence_length, hidden_size)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache_params: TTT4RecCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TTT4RecNextItemOutput(ModelOutput):
    """Output of [`TTT4RecForNextItemPrediction`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            The `config.loss_type` loss of the labelled targets: their sum divided by `num_items_in_batch`, or their
            mean.
        logits (`torch.FloatTensor` of shape `(batch_size, num_items)`, *optional*, not with `return_logits=False`):
            Scores of every item as the next item after each row's newest item; the padding id scores the lowest
            representable value.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            See [`TTT4RecModelOutput`].
        cache_params ([`TTT4RecCache`], *optional*): see [`TTT4RecModelOutput`].
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): see [`TTT4RecModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    cache_params: TTT4RecCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# the output of `TTT4RecForNextItemPrediction.recommend` (the one output of every recommender's `recommend`)
TTT4RecRecommendations = Recommendations


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


class TTT4RecRMSNorm(nn.Module):
    """RMSNorm `x / sqrt(mean(x^2) + eps) * weight` over the hidden dimension (the norm of the residual blocks)."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps), computed in float32 at least (float16/bfloat16 inputs are upcast, float64 kept),
        # then the scale in the input's dtype
        normalized = F.rms_norm(
            hidden_states.to(at_least_float32(hidden_states.dtype)), hidden_states.shape[-1:], eps=self.eps
        )
        return self.weight * normalized.to(hidden_states.dtype)


class TTT4RecSwiGLU(nn.Module):
    """Feed-forward block `down(act(gate(x)) * up(x))`."""

    def __init__(self, config: TTT4RecConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class TTT4RecTargetMLP(nn.Module):
    """The target tower of `item_scoring="target_mlp"`: item embedding -> Linear -> ReLU -> Linear."""

    def __init__(self, config: TTT4RecConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.target_mlp_size)
        self.fc2 = nn.Linear(config.target_mlp_size, config.hidden_size)

    def forward(self, item_embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(item_embeddings)))


class TTT4RecCausalConv(nn.Conv1d):
    """Causal depthwise 1-D convolution over the sequence that can continue from the last inputs it saw."""

    def __init__(self, hidden_size: int, kernel_size: int):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=True)

    def forward(
        self, x: torch.Tensor, window: torch.Tensor | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Convolve `x` `[batch, seq, hidden]`, continuing after `window` `[batch, hidden, kernel - 1]` (zeros: the
        start of the sequence). Returns the output and, when `lengths` (valid items per row) is given, the window
        after each row's last valid item."""
        batch, seq, hidden = x.shape
        if window is None:
            window = x.new_zeros(batch, hidden, self.kernel_size[0] - 1)
        # [batch, hidden, kernel - 1 + seq]
        extended = torch.cat([window.to(x.dtype), x.transpose(1, 2)], dim=2)
        out = F.conv1d(extended, self.weight, self.bias, groups=self.groups).transpose(1, 2)
        if lengths is None:
            return out, None
        # the last kernel - 1 valid inputs of each row: positions lengths .. lengths + kernel - 2 of `extended`
        index = lengths[:, None] + torch.arange(self.kernel_size[0] - 1, device=x.device)[None, :]
        new_window = extended.gather(2, index[:, None, :].expand(batch, hidden, -1))
        return out, new_window


class TTT4RecSequenceBlock(nn.Module):
    """Projections to the TTT views, the TTT layer, LayerNorm, (gate,) output projection."""

    def __init__(self, config: TTT4RecConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_mamba = config.backbone == "mamba"
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width, bias=False)
        if self.is_mamba:
            # Q and K share one projection, then each has its own causal convolution
            self.conv_q = TTT4RecCausalConv(width, config.conv_kernel)
            self.conv_k = TTT4RecCausalConv(width, config.conv_kernel)
            self.g_proj = nn.Linear(width, width, bias=False)
        else:
            self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.ttt = TTTLayer(config)
        self.post_norm = nn.LayerNorm(width, eps=config.ttt_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: InnerState | None,
        conv_states: dict[str, torch.Tensor] | None,
        valid: torch.Tensor | None,
        offsets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, InnerState, dict[str, torch.Tensor]]:
        batch, seq, width = hidden_states.shape
        lengths = None if valid is None else valid.sum(dim=1)
        new_conv = {}
        if self.is_mamba:
            shared = self.q_proj(hidden_states)
            window_q = None if conv_states is None else conv_states["conv_q"]
            window_k = None if conv_states is None else conv_states["conv_k"]
            XQ, new_conv["conv_q"] = self.conv_q(shared, window_q, lengths)
            XK, new_conv["conv_k"] = self.conv_k(shared, window_k, lengths)
        else:
            XQ, XK = self.q_proj(hidden_states), self.k_proj(hidden_states)
        XV = self.v_proj(hidden_states)

        # [batch, seq, heads, head_dim]
        XQ, XK, XV = (x.view(batch, seq, self.num_heads, self.head_dim) for x in (XQ, XK, XV))
        output, state = self.ttt(hidden_states, XQ, XK, XV, state=state, valid=valid, offsets=offsets)
        output = self.post_norm(output.reshape(batch, seq, width))
        if self.is_mamba:
            output = F.gelu(self.g_proj(hidden_states), approximate="tanh") * output
        return self.o_proj(output), state, new_conv


class TTT4RecBlock(nn.Module):
    """Residual block: [input conv ->] RMSNorm -> sequence block -> +residual -> RMSNorm -> SwiGLU -> +residual."""

    def __init__(self, config: TTT4RecConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_mamba = config.backbone == "mamba"
        if self.is_mamba:
            self.conv_norm = TTT4RecRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.conv = TTT4RecCausalConv(config.hidden_size, config.conv_kernel)
        self.seq_norm = TTT4RecRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.seq_modeling_block = TTT4RecSequenceBlock(config)
        self.ffn_norm = TTT4RecRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = TTT4RecSwiGLU(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache_params: TTT4RecCache | None = None,
        valid: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        state = conv_states = None
        if cache_params is not None:
            state = cache_params.inner_states[self.layer_idx]
            conv_states = cache_params.conv_states[self.layer_idx]
        new_conv = {}
        if self.is_mamba:
            window = None if conv_states is None else conv_states["pre_conv"]
            lengths = None if valid is None else valid.sum(dim=1)
            conv_out, new_conv["pre_conv"] = self.conv(self.conv_norm(hidden_states), window, lengths)
            hidden_states = hidden_states + conv_out

        residual = hidden_states
        hidden_states, state, seq_conv = self.seq_modeling_block(
            self.seq_norm(hidden_states), state, conv_states, valid, offsets
        )
        hidden_states = residual + hidden_states
        hidden_states = hidden_states + self.mlp(self.ffn_norm(hidden_states))

        if cache_params is not None:
            new_conv.update(seq_conv)
            cache_params.inner_states[self.layer_idx] = _detached(state)
            cache_params.conv_states[self.layer_idx] = {k: v.detach() for k, v in new_conv.items()}
        return hidden_states


def _detached(state: InnerState) -> InnerState:
    """A cache-ready copy of `state`: no autograd history, pending gradient sums always present, and weights that
    never share memory with the model's parameters (for one row, `expand` + `contiguous` would not copy)."""
    pending = state.pending or {k: torch.zeros_like(v) for k, v in state.weights.items()}
    return InnerState(
        weights={k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.weights.items()},
        pending={k: v.detach() for k, v in pending.items()},
    )


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class TTT4RecPreTrainedModel(PreTrainedModel):
    config: TTT4RecConfig
    config_class = TTT4RecConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["TTT4RecBlock"]
    _is_stateful = True

    def __init__(self, config: TTT4RecConfig, *inputs, **kwargs):
        config.check_arguments()  # settings changed after the config was made are checked here too
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; an unreadable weights file is an `OSError` that says what to do."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"The weights of {pretrained_model_name_or_path} could not be read ({error}). The safetensors file "
                "is probably truncated or corrupted, e.g. by an interrupted download or copy: download or save the "
                "checkpoint again."
            ) from error

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, TTT4RecCausalConv):
            # PyTorch's own Conv1d initialisation, which the official code keeps (it re-initialises only linear and
            # embedding layers): uniform in +-1/sqrt(fan_in), fan_in = kernel size for a depthwise convolution
            bound = 1.0 / math.sqrt(module.kernel_size[0] * module.in_channels // module.groups)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, TTTLayer):
            for name in module.weight_names:
                param = getattr(module, name)
                if name.startswith("W"):
                    init.normal_(param, mean=0.0, std=std)
                else:
                    init.zeros_(param)
            init.ones_(module.ttt_norm_weight)
            init.zeros_(module.ttt_norm_bias)
            init.normal_(module.learnable_ttt_lr_weight, mean=0.0, std=std)
            init.zeros_(module.learnable_ttt_lr_bias)
            init.zeros_(module.learnable_token_idx)


class TTT4RecModel(TTT4RecPreTrainedModel):
    """The TTT4Rec sequence encoder: item ids -> hidden state after each item."""

    def __init__(self, config: TTT4RecConfig):
        super().__init__(config)
        self.item_embeddings = nn.Embedding(config.num_items, config.hidden_size, padding_idx=config.pad_token_id)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.embedding_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([TTT4RecBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = TTT4RecRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self._compiled_step = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.item_embeddings = value

    def init_cache(self, batch_size: int) -> TTT4RecCache:
        """A cache for `batch_size` rows that have read nothing yet."""
        device = self.item_embeddings.weight.device
        dtype = self.item_embeddings.weight.dtype
        inner, conv = [], []
        for block in self.layers:
            inner.append(_detached(block.seq_modeling_block.ttt.initial_state(batch_size)))
            window = torch.zeros(
                batch_size, self.config.hidden_size, self.config.conv_kernel - 1, device=device, dtype=dtype
            )
            conv.append({name: window.clone() for name in CONV_NAMES} if block.is_mamba else {})
        return TTT4RecCache(
            inner_states=inner,
            conv_states=conv,
            seen=torch.zeros(batch_size, dtype=torch.long, device=device),
            last_hidden_state=torch.zeros(batch_size, self.config.hidden_size, device=device, dtype=dtype),
            config_dict=cache_config_dict(self.config),
        )

    def compile_step(self, **compile_kwargs) -> None:
        """Compile the one-item cached step (`input_ids` of shape `(batch_size, 1)` with `cache_params`) with
        `torch.compile`; every other call keeps running eagerly. Inputs are still validated in eager code.

        The first step of each batch size compiles (seconds); later steps run as one graph instead of hundreds of
        small operations. `compile_kwargs` go to `torch.compile` (defaults: `fullgraph=True, dynamic=False`).
        Copies and pickles of the model run eagerly until their own `compile_step()`.
        """
        compile_kwargs = {"fullgraph": True, "dynamic": False, **compile_kwargs}
        # the rotary tables are filled on first use: fill them now, or the second step would compile again
        weight = self.item_embeddings.weight
        for block in self.layers:
            block.seq_modeling_block.ttt.rotary_table(weight.device, weight.dtype)
        self._compiled_step = torch.compile(self._encode, **compile_kwargs)

    def __getstate__(self) -> dict:
        # the compiled step is neither copied nor pickled: a copy runs eagerly until its own `compile_step()`
        state = dict(super().__getstate__())
        state["_compiled_step"] = None
        return state

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache_params: TTT4RecCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        check_inputs: bool = True,
        **kwargs,
    ) -> TTT4RecModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Item ids in `[0, num_items)`, oldest first; rows are right-padded with the padding id.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for items, 0 for padding (right padding only). Defaults to `input_ids != pad_token_id`.
            cache_params ([`TTT4RecCache`], *optional*):
                The state after the items read so far; `input_ids` then holds each row's next items.
            use_cache (`bool`, *optional*):
                Return the updated cache. Defaults to True when `cache_params` is given, else to `config.use_cache`
                when not training.
            output_hidden_states (`bool`, *optional*):
                Also return the hidden states after the embeddings and after each block.
            return_dict (`bool`, *optional*):
                Return a [`TTT4RecModelOutput`] instead of a tuple.
            check_inputs (`bool`, *optional*, defaults to `True`):
                Validate the values of the inputs ([`validate_inputs`]). `False` keeps only the checks of shapes and
                types, which need no synchronisation with the device: for inputs already validated, such as the
                trainer's and the evaluator's batches (checked once when the data set is loaded).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if kwargs:
            raise TypeError(f"TTT4RecModel.forward() got unexpected arguments: {sorted(kwargs)}.")
        use_cache = self._use_cache(use_cache, cache_params)
        if check_inputs:
            attention_mask = self.validate_inputs(input_ids, attention_mask, cache_params)
        else:
            attention_mask = self._check_shapes(input_ids, attention_mask, cache_params)
        if use_cache and cache_params is None:
            cache_params = self.init_cache(input_ids.shape[0])

        hidden_states, all_hidden_states = self._run(
            input_ids, attention_mask, cache_params, bool(output_hidden_states)
        )

        if not return_dict:
            return tuple(
                v for v in (hidden_states, cache_params if use_cache else None, all_hidden_states) if v is not None
            )
        return TTT4RecModelOutput(
            last_hidden_state=hidden_states,
            cache_params=cache_params if use_cache else None,
            hidden_states=all_hidden_states,
        )

    def _use_cache(self, use_cache: bool | None, cache_params: TTT4RecCache | None) -> bool:
        """`use_cache` resolved (see `forward`); refuses a cache that would be dropped, or used for training."""
        if use_cache is None:
            use_cache = cache_params is not None or (self.config.use_cache and not self.training)
        elif not use_cache and cache_params is not None:
            raise ValueError(
                "`cache_params` was given with `use_cache=False`: the cache would be advanced but not returned. "
                "Leave `use_cache` unset (or True) to continue from the cache, or drop `cache_params` to read "
                "`input_ids` as whole histories."
            )
        if use_cache and self.training and torch.is_grad_enabled():
            raise ValueError(
                "`use_cache=True` is for inference: the cache does not carry gradients between calls. Call "
                "`model.eval()` (or run under `torch.no_grad()`), or pass `use_cache=False` to train."
            )
        return use_cache

    def _run(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        cache_params: TTT4RecCache | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The encoder on checked inputs: the compiled step for one-item cached steps (after `compile_step()`),
        else eager."""
        # Without a cache, right padding cannot influence valid positions (everything is causal): skip masking.
        valid = attention_mask.bool() if cache_params is not None else None
        encode = self._encode
        if self._compiled_step is not None and cache_params is not None and input_ids.shape[1] == 1:
            encode = self._compiled_step
        return encode(input_ids, valid, cache_params, output_hidden_states)

    def _encode(
        self,
        input_ids: torch.LongTensor,
        valid: torch.Tensor | None,
        cache_params: TTT4RecCache | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The encoder on validated inputs: embeddings, blocks, final norm; advances `cache_params` in place.

        Free of data-dependent Python branches on the one-item cached step, so `compile_step` can compile it
        into one graph.
        """
        offsets = None if cache_params is None else cache_params.seen % self.config.mini_batch_size
        # [batch, seq, hidden]
        hidden_states = self.embedding_layer_norm(self.embedding_dropout(self.item_embeddings(input_ids)))
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for block in self.layers:
            hidden_states = block(hidden_states, cache_params=cache_params, valid=valid, offsets=offsets)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)

        if cache_params is not None:
            lengths = valid.sum(dim=1)
            newest = hidden_states[torch.arange(len(lengths), device=lengths.device), (lengths - 1).clamp_min(0)]
            has_new = (lengths > 0)[:, None]
            cache_params.last_hidden_state = torch.where(
                has_new, newest.detach().to(cache_params.last_hidden_state.dtype), cache_params.last_hidden_state
            )
            cache_params.seen = cache_params.seen + lengths
        return hidden_states, all_hidden_states

    def validate_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache_params: TTT4RecCache | None = None,
    ) -> torch.Tensor:
        """Validate the inputs of `forward` and return the attention mask (the default one when `attention_mask` is
        None); every problem is a `ValueError` that names it. Reads the values (item id range, right padding,
        padding inside the mask, rows without items), which synchronises the host with the device: `forward` skips
        this part with `check_inputs=False`."""
        mask_given = attention_mask is not None
        attention_mask = self._check_shapes(input_ids, attention_mask, cache_params)
        self._check_item_ids(input_ids)
        self._check_padding(input_ids, attention_mask, mask_given, cache_params is None)
        return attention_mask

    def validate_cache(self, cache_params: TTT4RecCache) -> None:
        """Raise a `ValueError` if `cache_params` was made by a model of another configuration, or is on another
        device or in another dtype than this model."""
        check_cache_type(cache_params)
        check_config(cache_params.config_dict, cache_config_dict(self.config))
        check_cache_placement(cache_params.last_hidden_state, self.item_embeddings.weight)

    def _check_shapes(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache_params: TTT4RecCache | None
    ) -> torch.Tensor:
        """The checks that read no tensor values (types, shapes, the cache's rows and settings); returns the
        attention mask."""
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"`input_ids` must be a torch.LongTensor, got {type(input_ids).__name__}.")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(
                f"`input_ids` must hold integer item ids, got dtype {input_ids.dtype}; convert with `.long()`."
            )
        if input_ids.dim() != 2:
            raise ValueError(
                f"`input_ids` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}; for a "
                "single sequence use `input_ids[None]`."
            )
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"`input_ids` is empty (shape {tuple(input_ids.shape)}): give at least one item per row.")
        if attention_mask is None:
            attention_mask = default_attention_mask(input_ids, self.config.pad_token_id)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has shape "
                f"{tuple(input_ids.shape)}; they must match."
            )
        if cache_params is not None:
            check_cache_type(cache_params)
            if cache_params.batch_size != input_ids.shape[0]:
                raise ValueError(
                    f"`input_ids` has {input_ids.shape[0]} rows but the cache holds {cache_params.batch_size}; "
                    "select the cache's rows to match (`cache.select(rows)`) or start a new cache."
                )
            self.validate_cache(cache_params)
        return attention_mask

    def _check_item_ids(self, input_ids: torch.Tensor) -> None:
        """Every id is in `[0, num_items)`."""
        num_items = self.config.num_items
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= num_items:
            bad = low if low < 0 else high
            raise ValueError(
                f"Item id {bad} is outside [0, {num_items}) (`num_items` = {num_items}, padding id "
                f"{self.config.pad_token_id} included). Map unknown items to known ids or drop them before calling "
                "the model."
            )

    def _check_padding(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_given: bool, whole_histories: bool
    ) -> None:
        """Right padding only, no padding id inside the mask, and (for whole histories, read without a cache) at
        least one item per row."""
        mask = attention_mask.bool()
        if mask.shape[1] > 1 and (mask[:, 1:] & ~mask[:, :-1]).any():
            row = int((mask[:, 1:] & ~mask[:, :-1]).any(dim=1).nonzero()[0])
            if mask_given:
                raise ValueError(
                    f"`attention_mask` must be right-padded (row {row} is not): in each row, all items come first "
                    "and padding after."
                )
            raise ValueError(
                f"The padding id {self.config.pad_token_id} appears before an item in row {row} of `input_ids`: "
                "histories must be right-padded (all items first, then padding)."
            )
        if self.config.pad_token_id is not None and (input_ids.eq(self.config.pad_token_id) & mask).any():
            raise ValueError(
                f"The padding id {self.config.pad_token_id} appears at a position the attention mask marks as an "
                "item; set the mask to 0 there."
            )
        # (with a cache, a row may receive no item in a step: it keeps its state, or stays empty until its first
        # item; `recommend` refuses rows that have read nothing)
        if whole_histories:
            empty = (~mask.any(dim=1)).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"Row(s) {empty.tolist()} contain no items (all padding); every row needs at least one item. "
                    "(To keep a state for users who have no item yet, start from "
                    "`cache_params=model.init_cache(batch_size)`.)"
                )


class TTT4RecForNextItemPrediction(TTT4RecPreTrainedModel, RecommenderHeadMixin):
    """TTT4Rec encoder with the next-item head: the score of item `i` after hidden state `h` is `h . e_i` with the
    (tied) item embedding, or `h . MLP(e_i)` with `item_scoring="target_mlp"`.

    The recommender interface (what the project's trainer and evaluator use, and all they use):

    * `config.num_items` (padding id included), `config.pad_token_id` (an id, or None), `config.loss_type`,
      `config.num_negatives` (and, for `"sampled_softmax"`, `config.negative_sampler`, `config.in_batch_negatives`
      and `set_item_counts(counts)`);
    * `forward(input_ids, attention_mask=None, labels=None, cache_params=None, use_cache=None, ..., *,
      num_items_in_batch=None, return_logits=True, check_inputs=True)`: an output with `.loss` (from `labels`,
      according to `config.loss_type`), `.logits` (each row's scores after its newest item; None with
      `return_logits=False`), `.last_hidden_state` and `.cache_params`;
    * `score_items(hidden_states)`: `[..., num_items]` scores of every item, the padding id at the lowest value;
    * `score_candidates(hidden_states, candidate_ids)`: `[batch, num_candidates]` scores of each row's candidates.

    Every score is `h . item_features()[i]`: the loss, the evaluation and `recommend` all score through these. The
    head (the loss, scoring, `recommend`) is the one every recommender of the project shares
    (`recommender_head.RecommenderHeadMixin`); this class gives it the TTT4Rec encoder.
    """

    _tied_weights_keys = {"item_head.weight": "model.item_embeddings.weight"}
    # the loss honours `num_items_in_batch` (sum over targets / num_items_in_batch), as `Trainer` expects
    accepts_loss_kwargs = True

    def __init__(self, config: TTT4RecConfig):
        super().__init__(config)
        self.model = TTT4RecModel(config)
        self.item_head = nn.Linear(config.hidden_size, config.num_items, bias=False)
        self.target_mlp = TTT4RecTargetMLP(config) if config.item_scoring == "target_mlp" else None
        # the training-split count of each item, for `negative_sampler="popularity"` (`set_item_counts`); a buffer,
        # so it follows the model to its device, but not saved: it belongs to the training data, not the model
        self.register_buffer("item_counts", None, persistent=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.item_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.item_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.item_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.item_head = value

    def init_cache(self, batch_size: int) -> TTT4RecCache:
        """A cache for `batch_size` rows that have read nothing yet."""
        return self.model.init_cache(batch_size)

    def compile_step(self, **compile_kwargs) -> None:
        """Compile the one-item cached step of the encoder (see [`TTT4RecModel.compile_step`]): the lowest-latency
        way to serve `recommend(new_items[:, None], cache_params=cache)`."""
        self.model.compile_step(**compile_kwargs)

    def item_features(self, item_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """The vectors hidden states are scored against: `[..., hidden]` for `item_ids` `[...]`, or
        `[num_items, hidden]` for all items (the padding id's row included). The item embedding itself, or its
        image through the target tower with `item_scoring="target_mlp"`."""
        weight = self.item_head.weight
        features = weight if item_ids is None else F.embedding(item_ids, weight)
        if self.target_mlp is not None:
            features = self.target_mlp(features)
        return features

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache_params: TTT4RecCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool = True,
        check_inputs: bool = True,
        **kwargs,
    ) -> TTT4RecNextItemOutput | tuple:
        r"""
        Args:
            input_ids, attention_mask, cache_params, use_cache, output_hidden_states, return_dict: see
                [`TTT4RecModel.forward`].
            labels (`torch.LongTensor`, *optional*):
                Either `(batch_size, sequence_length)`: the next item after each position (`-100` where there is no
                target), which trains on every prefix at once; or `(batch_size,)`: the next item after each row's
                newest item. The loss is `config.loss_type`'s over these targets.
            num_items_in_batch (`int` or `torch.Tensor`, *optional*):
                The loss is the sum over the targets divided by this (the number of targets of the whole batch
                across processes and accumulated steps: exact distributed training and gradient accumulation);
                without it, the mean over the targets.
            return_logits (`bool`, *optional*, defaults to `True`):
                Score every item after each row's newest item (`logits`); training needs no such scores.
            check_inputs (`bool`, *optional*, defaults to `True`):
                Validate the values of `input_ids`, `attention_mask` and `labels`; `False` skips every check that
                synchronises with the device (for data validated before, as the trainer's).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            cache_params=cache_params,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            check_inputs=check_inputs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        mask = (
            default_attention_mask(input_ids, self.config.pad_token_id) if attention_mask is None else attention_mask
        )
        logits, loss = self._head(
            hidden_states, mask, outputs.cache_params, labels, num_items_in_batch, return_logits, check_inputs
        )
        if not return_dict:
            out = (loss, logits, hidden_states, outputs.cache_params, outputs.hidden_states)
            return tuple(v for v in out if v is not None)
        return TTT4RecNextItemOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=hidden_states,
            cache_params=outputs.cache_params,
            hidden_states=outputs.hidden_states,
        )

    def validate_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache_params: TTT4RecCache | None = None,
    ) -> torch.Tensor:
        """See [`TTT4RecModel.validate_inputs`]."""
        return self.model.validate_inputs(input_ids, attention_mask, cache_params)

    def validate_cache(self, cache_params: TTT4RecCache) -> None:
        """See [`TTT4RecModel.validate_cache`]."""
        self.model.validate_cache(cache_params)


__all__ = [
    "TTT4RecPreTrainedModel",
    "TTT4RecModel",
    "TTT4RecForNextItemPrediction",
    "TTT4RecModelOutput",
    "TTT4RecNextItemOutput",
    "TTT4RecRecommendations",
]
