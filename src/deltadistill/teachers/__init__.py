"""Pretrained teacher networks (TF.js graph models converted to PyTorch)."""
