"""Names that command-line values are checked against, in plain Python: a bad
flag is answered before JAX and Flax load (``Config.check_fields``)."""

NETWORKS = ("auto", "mlp", "minatar_cnn", "nature_cnn", "impala_cnn")
CONV_IMPLS = ("auto", "patches", "xla")
