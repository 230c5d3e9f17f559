"""Serving a saved model: preprocessing, prediction (PyTorch and onnxruntime), batch prediction."""
