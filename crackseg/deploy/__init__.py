"""Putting a trained network to work on photographs.

``tiling`` cuts large images into overlapping tiles and blends their maps back;
``predictor`` batches the inputs of many images through a backend; ``backends`` hides
whether a PyTorch checkpoint or an ONNX file runs; ``measure`` gives each crack's length
and width; ``settings`` holds crackseg-predict's settings and ``outputs`` writes its
files; ``predict_folder`` is ``crackseg-predict`` and ``onnx_export`` is ``crackseg-export``.
"""
