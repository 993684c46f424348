"""Running a model file: one predictor interface over its backends, PyTorch, ONNX Runtime and OpenVINO (backends);
images decoded as training decodes them (images); the Python API's loaded model and its detections (model);
`otxlite predict` in this process (predict) or on Ray Data (predict_ray) and the files it writes (writers);
`demo` and `explain`. Imports from otxlite.core, otxlite.data and otxlite.models.
"""
