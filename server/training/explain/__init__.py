"""Automated interpretability: explain each SAE feature from its examples and score the
explanation by detection, as stages (examples, explainers, judges and scorers, the run)."""
