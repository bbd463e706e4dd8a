"""liftvid's UPLiFT training objective against the release's own code (issue 22, build item 4).

Runs the release's ``UPLiFT`` module (``uplift/uplift.py`` of ``mwalmer-umd/UPLiFT``, MIT) with its
released configs and the loop body of its ``train_uplift.py`` (quoted below: pyramid by ``TVF.resize``,
features of every size, per level ``enable_iterative(i + 1)`` with ``return_steps``, ``MSELoss`` or
``CosineEmbeddingLoss`` per step), and liftvid's :func:`~liftvid.models.uplift_objective.uplift_objective`
on a copy of the same weights, random backbone and batch; prints both losses and the largest relative
gradient difference. Needs the release's files, not in liftvid:

    git clone https://github.com/mwalmer-umd/UPLiFT /tmp/UPLiFT
    python workflows/uplift_objective_vs_release.py /tmp/UPLiFT

Measured (CPU, torch 2.14.1, random vit_small_patch14_dinov2 at 224 px / vit_small_patch16_dinov3 at
256 px, batch 2; the release's ``git show HEAD`` files):
    uplift_dinov2-s14 l2: equal loss (7.5722256), max rel. grad diff 1.9e-06; cosine: equal, 3.9e-06
    uplift_dinov3-splus16 l2: equal loss (3.5135579), 0; cosine: equal, 6.0e-06
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TVF
import yaml

from liftvid import Backbone, UPLiFT, UPLiFTConfig, uplift_objective

CASES = (("uplift_dinov2-s14", "vit_small_patch14_dinov2", 224), ("uplift_dinov3-splus16", "vit_small_patch16_dinov3", 256))


def _namespace(d):
    # the release reads its OmegaConf config by attribute and hasattr; a namespace does the same
    if isinstance(d, dict):
        return types.SimpleNamespace(**{k: _namespace(v) for k, v in d.items()})
    return d


def release_loss(cfg, rel, extractor, image_batch: torch.Tensor) -> torch.Tensor:
    """train_uplift.py's loop body for a ViT backbone, no cache, lat_aug 0 (its code, MIT)."""
    image_scales = OrderedDict()
    image_scales[cfg.train.imsize] = image_batch
    cursize = cfg.train.imsize
    for _ in range(cfg.train.down_steps):
        if cursize not in image_scales:
            image_scales[cursize] = TVF.resize(image_batch, [cursize, cursize])
        insize = int(cursize / cfg.uplift.up_factor)
        if insize not in image_scales:
            image_scales[insize] = TVF.resize(image_batch, [insize, insize])
        cursize = int(cursize / cfg.uplift.up_factor)
    feat_scales = {}
    for s in image_scales:
        with torch.no_grad():
            feat_scales[s] = extractor(image_scales[s])[0]
    criterion = {"l1": torch.nn.L1Loss(), "l2": torch.nn.MSELoss()}.get(cfg.train.loss, torch.nn.CosineEmbeddingLoss())
    loss = 0
    for i in np.arange(0, cfg.train.down_steps):
        scale_tar = int(cfg.train.imsize / (cfg.uplift.up_factor ** i))
        scale_in = int(scale_tar / cfg.uplift.up_factor)
        if cfg.train.multi_step:
            rel.enable_iterative(i + 1)
        for feat_out in rel(image_scales[scale_in], feat_scales[scale_in]):
            feat_tar = feat_scales[feat_out.shape[2] * cfg.backbone.patch]
            if cfg.train.loss == "cosine":
                a = feat_out.permute(0, 2, 3, 1).reshape(-1, feat_out.shape[1])
                b = feat_tar.permute(0, 2, 3, 1).reshape(-1, feat_tar.shape[1])
                loss += criterion(a, b, torch.ones(a.shape[0]))
            else:
                loss += criterion(feat_out, feat_tar)
    return loss


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("release", type=Path, help="a checkout of mwalmer-umd/UPLiFT")
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("release_uplift", args.release / "uplift" / "uplift.py")
    release = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(release)
    results = []
    for name, timm_name, size in CASES:
        yaml_path = args.release / "uplift" / "configs" / f"{name}.yaml"
        for loss_kind in ("l2", "cosine"):
            cfg = _namespace(yaml.safe_load(yaml_path.read_text()))
            cfg.train.imsize, cfg.train.loss = size, loss_kind
            torch.manual_seed(0)
            rel = release.UPLiFT(cfg.backbone.channel, cfg.backbone.patch, cfg.uplift)
            rel.return_steps(True)
            ours = UPLiFT(UPLiFTConfig.from_yaml(yaml_path))
            ours.load_state_dict(rel.state_dict())
            rel.train(), ours.train()
            bb = Backbone(timm_name, weights="random", facet="token-norm")

            def extractor(x):  # the release's PretrainedViTWrapper(norm=True) forward, n=1
                return bb.model.forward_intermediates(x, 1, return_prefix_tokens=True, norm=True,
                                                      output_fmt="NCHW", intermediates_only=True)[0]

            images = torch.randn(2, 3, size, size)
            theirs = release_loss(cfg, rel, extractor, images)
            theirs.backward()
            mine = uplift_objective(bb, ours, images, dataclasses.replace(ours.config.training, loss=loss_kind))
            mine.backward()
            grad = max(float((p.grad - q.grad).abs().max() / (p.grad.abs().max() + 1e-12))
                       for p, q in zip(rel.parameters(), ours.parameters()))
            theirs, mine = float(theirs.detach()), float(mine.detach())
            results.append({"config": name, "loss": loss_kind, "release": theirs, "liftvid": mine,
                            "max_relative_grad_diff": grad})
            print(f"{name} {loss_kind}: release {theirs:.7f}, liftvid {mine:.7f}, "
                  f"max relative gradient difference {grad:.1e}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
