"""Pictures of a run: expert-load and router-competition agreement heatmaps, the loss curve;
and csmoe-ab (CompeteSMoE vs top-K on one experiment)."""
