"""Code both components share: the model-repository contract, protocol codecs and server glue.

Nothing here imports torch, so the transformer image stays small.
"""
