"""csmoe-megatron: expert-parallel MoE pretraining on megatron-core with CompeteSMoE routing."""

__version__ = "0.1.0"
