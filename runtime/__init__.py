"""Run exported Hiera models with onnxruntime or TensorRT, without torch: to come."""
