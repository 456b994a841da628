"""The demo world: procedural shape images with a watermark shortcut, and two small models trained on them."""
