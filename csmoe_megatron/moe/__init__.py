"""CompeteSMoE on megatron-core.

Pure torch (no megatron import): schedule (who competes when), affinity (neural responses,
gates), losses, reference (dense single-process layer for tests), context (run-wide step:
configure_run / set_step), metrics (pop_step_metrics / pop_expert_load).
megatron-core pieces: layer.CompeteSMoELayer (an MoELayer subclass plugged in by
model/spec.py), router.CompeteSMoERouter, dispatch (dense-mode token dispatchers).
Submodules are imported explicitly; this package imports nothing so the pure parts stay light.
"""
