"""Models: pure torch modules — the frozen timm ViT as a facet grid (backbone), LiFT (lift), frames → features on a device (extractor). No file formats, stores, schedulers or terminals."""
