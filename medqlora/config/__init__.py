"""The one config schema for a run: params YAML -> validated, resolved RunConfig.

Unknown keys, wrong types and impossible values are rejected here, before any notebook runs, with a message that
names the key and says what to provide. One module per section (as axolotl splits its schema), joined in run.py.
"""
from medqlora.config.base import (
           LOCAL_DATA_SUFFIXES,
           ConfigError,
           is_local_path,
           model_folder,
)
from medqlora.config.checks import check_inputs
from medqlora.config.data import CANONICAL_FIELDS, DataConfig
from medqlora.config.evaluation import EvalConfig, EvalSetConfig
from medqlora.config.export import GGUF_MAKEABLE, NEEDS_LLAMA_CPP, ExportConfig
from medqlora.config.loading import (
           PATH_HELP,
           apply_overrides,
           load_config,
           parse_override,
           read_params,
           save_config,
)
from medqlora.config.model import ALL_LINEAR, LoraConfig, ModelConfig
from medqlora.config.rl import RewardWeights, RLConfig
from medqlora.config.run import RunConfig, changed_keys, stage_inputs
from medqlora.config.training import MemoryConfig, TrainConfig

__all__ = ["ALL_LINEAR", "CANONICAL_FIELDS", "GGUF_MAKEABLE", "LOCAL_DATA_SUFFIXES", "NEEDS_LLAMA_CPP", "PATH_HELP",
           "ConfigError", "DataConfig", "EvalConfig", "EvalSetConfig", "ExportConfig", "LoraConfig", "MemoryConfig",
           "ModelConfig", "RLConfig", "RewardWeights", "RunConfig", "TrainConfig", "apply_overrides",
           "changed_keys", "check_inputs",
           "is_local_path", "load_config", "model_folder", "parse_override", "read_params", "save_config",
           "stage_inputs"]
