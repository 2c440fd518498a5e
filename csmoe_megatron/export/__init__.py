"""Hugging Face export and import: transformers Mixtral <-> our checkpoints (csmoe-export,
csmoe-import)."""
