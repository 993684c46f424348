"""After training: ONNX and OpenVINO IR (exporter), INT8 by post-training quantization or quantization-aware
training (optimize, qat), and the deploy.zip (deploy) with its standalone runner (deploy_runner). Imports from every
package below it: core, data, models, inference, engine.
"""
