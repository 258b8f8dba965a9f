"""The shapes world: captioned synthetic images and a tiny CLIP model trained on them.

`world` draws seeded scenes of coloured shapes and writes them as real image files, `train` trains a
small open_clip model on fresh scenes and saves it as an open_clip ``local-dir:`` folder, and `evaluate`
measures whether an encoder understands colour, shape, size and position; `tower` is the model's image
tower. Only `train` and `tower` import torch, so importing this package stays cheap.
"""
