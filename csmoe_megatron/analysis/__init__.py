"""Pictures of routing: expert-load and router-competition agreement heatmaps."""
