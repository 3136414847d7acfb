"""mhunet-deploy: Mamba-HUNet MS-lesion segmentation from training to a verified TensorRT engine."""

__version__ = "0.1.0"
