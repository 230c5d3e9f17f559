"""Evaluation of a saved model, and the run's results: curves, confusion matrix, mistakes."""
