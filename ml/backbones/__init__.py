"""ImageNet-pretrained backbones whose weights install with a package (no downloads)."""
