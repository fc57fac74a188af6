"""Export Hiera to ONNX (and TensorRT), optimize it, convert precisions and prove parity: to come."""
