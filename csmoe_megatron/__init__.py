"""csmoe-megatron: expert-parallel MoE pretraining on megatron-core with CompeteSMoE routing."""

from . import _checkout

__version__ = "0.1.0"

_checkout.install()  # an uninstalled checkout: tokenizer/ and configs/ under their installed names
