"""The PyTorch side: Mamba-HUNet and its selective scan (imports torch)."""
