"""Encoders: from a file's bytes to a unit vector.

Model specs and the bundled-model registry (``spec``), weights on this machine (``weights``), building
and loading (``loading``), the :class:`~clipsearch.encoders.encoder.Encoder`, the safe image decoder
(``images``) and the model's preprocessing without torch (``pixels``), the CLIP tokenizer without torch
(``tokenizer``), and the text tower as ONNX (``onnx_export`` writes it, ``onnx_text`` runs it).
Nothing here knows an index. Importing the package imports nothing heavy.
"""
