"""Shared test setup: no test may reach the network or the user's own Hugging Face cache.

Hugging Face libraries read these variables when they are imported, so they are set here, before any test module
imports them.
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ttt4rec-test-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

# the repository root (for `modeling_ttt4rec`, `dataset_builders`) and this folder (for the test helpers)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
