"""TTT4Rec for Hugging Face Transformers: sequential recommendation with Test-Time Training layers.

Importing this package registers the model with the Auto classes (`AutoConfig`, `AutoModel`).
"""

from transformers import AutoConfig, AutoModel

from .cache import TTT4RecCache
from .configuration_ttt4rec import TTT4RecConfig
from .modeling_ttt4rec import (
    TTT4RecForNextItemPrediction,
    TTT4RecModel,
    TTT4RecModelOutput,
    TTT4RecNextItemOutput,
    TTT4RecPreTrainedModel,
    TTT4RecRecommendations,
)
from .ttt import InnerState, TTTLayer

AutoConfig.register("ttt4rec", TTT4RecConfig, exist_ok=True)
AutoModel.register(TTT4RecConfig, TTT4RecForNextItemPrediction, exist_ok=True)
# save_pretrained writes `auto_map` and copies the source files, so the checkpoint loads with trust_remote_code=True
TTT4RecConfig.register_for_auto_class()
TTT4RecForNextItemPrediction.register_for_auto_class("AutoModel")

__all__ = [
    "InnerState",
    "TTT4RecCache",
    "TTT4RecConfig",
    "TTT4RecForNextItemPrediction",
    "TTT4RecModel",
    "TTT4RecModelOutput",
    "TTT4RecNextItemOutput",
    "TTT4RecPreTrainedModel",
    "TTT4RecRecommendations",
    "TTTLayer",
]
