"""The baselines of the TTT4Rec papers, as RecBole 1.2.1 builds them, with the project's recommender interface:
SASRec (`sasrec`, with a cache of its keys and values), GRU4Rec (`gru4rec`, with an incremental cache), NARM
(`narm`) and BERT4Rec (`bert4rec`).

Each model's files are flat siblings here (its configuration, its modeling file, `recommender.py`, and `losses.py`
and `recommender_head.py`, links to the package's one loss module and one next-item head), so `save_pretrained`
ships exactly them as remote code. Importing this package registers the models with the Auto classes.
"""

from transformers import AutoConfig, AutoModel

from .configuration_bert4rec import BERT4RecConfig
from .configuration_gru4rec import GRU4RecConfig
from .configuration_narm import NARMConfig
from .configuration_sasrec import SASRecConfig
from .modeling_bert4rec import BERT4RecForNextItemPrediction
from .modeling_gru4rec import GRU4RecCache, GRU4RecForNextItemPrediction
from .modeling_narm import NARMForNextItemPrediction
from .modeling_sasrec import SASRecCache, SASRecForNextItemPrediction
from .recommender import NextItemOutput, SequentialRecommender

for _config, _model in (
    (SASRecConfig, SASRecForNextItemPrediction),
    (GRU4RecConfig, GRU4RecForNextItemPrediction),
    (NARMConfig, NARMForNextItemPrediction),
    (BERT4RecConfig, BERT4RecForNextItemPrediction),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    # save_pretrained writes `auto_map` and copies the source files: the checkpoint loads with trust_remote_code
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModel")

__all__ = [
    "BERT4RecConfig",
    "BERT4RecForNextItemPrediction",
    "GRU4RecCache",
    "GRU4RecConfig",
    "GRU4RecForNextItemPrediction",
    "NARMConfig",
    "NARMForNextItemPrediction",
    "NextItemOutput",
    "SASRecCache",
    "SASRecConfig",
    "SASRecForNextItemPrediction",
    "SequentialRecommender",
]
