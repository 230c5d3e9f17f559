"""Publishing: the model card, the Hub push and pull-back check, the ONNX export."""
