"""Everything around the model that a remote-code user does not need: data loading, the trainer, evaluation,
metrics, sampled evaluation candidates, Hub publishing and grid search.

The package root (`modeling_ttt4rec/*.py`) holds exactly the files `save_pretrained` ships as remote code; this
subpackage is never shipped.
"""
