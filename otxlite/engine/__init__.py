"""Training and evaluation: `otxlite train` (train) on the loop it shares with quantization-aware training
(loop), several processes or Ray Train workers (distributed), the automatic batch size (batch_size), hyper-parameter
search (tune) and `otxlite eval` (evaluate). Imports from otxlite.core, data, models and inference.
"""
