"""After training: one-process loading of a checkpoint of any layout, csmoe-eval,
csmoe-generate."""
