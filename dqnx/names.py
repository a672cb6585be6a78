"""Names that command-line values are checked against, in plain Python: a bad
flag is answered before JAX and Flax load (``Config.validate``)."""

NETWORKS = ("auto", "mlp", "minatar_cnn", "nature_cnn", "impala_cnn")
