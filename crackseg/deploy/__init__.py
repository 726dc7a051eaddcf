"""Putting a trained network to work on photographs.

``tiling`` cuts large images into overlapping tiles and blends their maps back;
``predictor`` batches the inputs of many images through a backend; ``backends`` hides
whether a PyTorch checkpoint or an ONNX file runs; ``measure`` gives each crack's length
and width; ``pipeline`` is ``crackseg-predict`` and ``export`` is ``crackseg-export``.
"""
