"""Configuration: typed sections, YAML loading with dotted overrides, validation."""

from .load import ConfigError, from_dict, load_config, save_config, to_dict
from .schema import (CheckpointConfig, CompeteSMoEConfig, DataConfig, ExperimentConfig,
                     LoggingConfig, ModelConfig, MoEConfig, ParallelConfig, RunConfig, TrainConfig)
from .validate import data_parallel_size, total_steps, validate

__all__ = [
    "CheckpointConfig", "CompeteSMoEConfig", "ConfigError", "DataConfig", "ExperimentConfig",
    "LoggingConfig", "ModelConfig", "MoEConfig", "ParallelConfig", "RunConfig", "TrainConfig",
    "data_parallel_size", "from_dict", "load_config", "save_config", "to_dict", "total_steps",
    "validate",
]
