"""Experiments: protocols (conditions x seeds x tier), their runner, figures and tables."""
