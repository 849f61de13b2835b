"""Shared ML code for the initiatives: data, modeling, the training loop, evaluation, text perturbations."""
