"""Run exported Hiera models on images with onnxruntime or TensorRT, without torch.

    from runtime import Classifier
    model = Classifier.load("artifacts/hiera_base_classify.onnx")
    model.predict(["cat.jpg", "dog.png"], top_k=5)

Everything a model needs (preprocessing, labels, task) comes from the artifact's metadata.
"""

from .errors import HieraRuntimeError
from .model import Classifier, FeatureExtractor, Prediction, Reconstructor, load
from .preprocess import Preprocessing, load_image
from .segment import Segmenter, load_segmenter

__all__ = ["Classifier", "FeatureExtractor", "HieraRuntimeError", "Prediction", "Preprocessing", "Reconstructor",
           "Segmenter", "load", "load_image", "load_segmenter"]
