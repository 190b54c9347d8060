"""deltadistill: Delta Distillation for video CNNs."""
