"""Run exported Hiera models with onnxruntime or TensorRT, without torch.

So far: `runtime.preprocess`, the image preprocessing an artifact's metadata describes (the export
validates its artifacts through it). Sessions, the API and the CLI are to come.
"""
