"""The model's custom ops, one package each: the op's contract, its reference and its implementations
side by side (the native sources live apart, in ``mhunet_deploy/kernels/``)."""
