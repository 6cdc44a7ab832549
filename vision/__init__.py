"""The image-classification domain: image bytes to pixels (`imaging`, `preprocessing`), logits
to top-k classes (`postprocess`) and the drift signals of what is served (`drift`).

Pure functions and numpy/Pillow only: nothing here knows kserve, torch or a server. Bad input
raises plain errors (`imaging.ImageError`, a ValueError) that each server turns into its 400.
"""
