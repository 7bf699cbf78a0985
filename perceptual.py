"""perceptual.py: the frozen networks behind the perceptual term of the zero loss (losses.zero_loss).

The decoder moderator pushes decoded unsafe images toward the all-black image both in pixels and in the
features P(x) of a frozen network. Patronus uses VGG-19 relu3_4. Three choices (`--moderator.perceptual`
in moderator.py and nft_train.py):
  clip   the pocket CLIP's vision tower (runs/clip), the pocket world's default (clip_features)
  vae    intermediate features of the pipeline's own frozen VAE *encoder* (its first two down blocks): needs
         no download, works for any SD v1.x pipeline, and is what real models use unless VGG-19 is given
  vgg19  VGG-19 relu3_4, as the authors' tools/image_loss.py, from a torchvision-format state dict file the
         user provides (`--moderator.vgg19=vgg19.pth`, e.g. torchvision's vgg19-dcbb9e9d.pth); VGG-19's
         `features` layers are written out here in plain torch, so torchvision itself is not needed (it does
         not install beside this torch)

Every network here is frozen and maps images (B, 3, H, W) in [0, 1] to a feature tensor. Never the
evaluator: the evaluator must not train a defence.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

# VGG-19 ("configuration E"): conv widths, "M" = 2x2 max pool. Module i of `features` is numbered as in
# torchvision, so its state dict keys features.N.weight / features.N.bias load as they are.
VGG19_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
RELU3_4 = 17  # index of relu3_4 in `features`: conv1_1 is 0, relu1_1 1, ..., conv3_4 16, relu3_4 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # VGG was trained on ImageNet images normalised with these
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG-19's convolutional part up to and including `upto` (default relu3_4): (B, 3, H, W) in [0, 1] ->
    (B, 256, H/4, W/4) at relu3_4. ImageNet normalisation is applied inside."""

    def __init__(self, upto: int = RELU3_4):
        super().__init__()
        layers, width = [], 3
        for v in VGG19_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, v, 3, padding=1), nn.ReLU(inplace=True)]
                width = v
        self.features = nn.Sequential(*layers)  # all 37 modules, so that every features.* key loads strictly
        self.upto = upto
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        h = (x - self.mean) / self.std
        for layer in self.features[: self.upto + 1]:
            h = layer(h)
        return h


def load_vgg19(path) -> VGG19Features:
    """VGG-19 features from a torchvision-format state dict (.pth, or .safetensors with the same keys).

    Only the `features.*` keys are used (the classifier head is not needed) and they must all be there with
    the right shapes: strict loading, so a wrong file fails loudly instead of giving random features.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--moderator.vgg19={path}: no such file. Give a torchvision-format VGG-19 state dict, "
                                "e.g. torchvision's vgg19-dcbb9e9d.pth downloaded on a machine that is online")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code executed
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{path} has no features.N.weight keys: not a torchvision VGG state dict "
                         f"(first keys: {list(state)[:4]})")
    model = VGG19Features()
    buffers = {"mean": model.mean, "std": model.std}
    model.load_state_dict(features | buffers, strict=True)  # raises on any missing, extra or misshaped key
    return model.eval().requires_grad_(False)


class VAEEncoderFeatures(nn.Module):
    """Features of a frozen copy of a VAE's encoder: conv_in and the first `blocks` down blocks.

    (B, 3, H, W) in [0, 1] -> (B, C, H/2^blocks, W/2^blocks) (each of these blocks ends in a 2x downsample):
    with two blocks, SD's VAE gives 256 channels at H/4, the same shape as VGG-19's relu3_4. A copy, so that
    training the pipeline's VAE can never move the perceptual space.
    """

    def __init__(self, vae, blocks: int = 2):
        super().__init__()
        self.conv_in = copy.deepcopy(vae.encoder.conv_in)
        self.blocks = copy.deepcopy(vae.encoder.down_blocks[:blocks])
        self.eval().requires_grad_(False)

    def forward(self, x):
        h = self.conv_in((x * 2 - 1).to(self.conv_in.weight.dtype))  # the VAE works in [-1, 1]
        for block in self.blocks:
            h = block(h)
        return h.float()


def clip_features(vision_model, images, layer: int = 1):
    """Features of a frozen CLIP vision tower for images in [0, 1]: hidden states (B, tokens, D) of one layer
    (the tower was trained on images in [-1, 1])."""
    out = vision_model(pixel_values=images * 2 - 1, output_hidden_states=True)
    return out.hidden_states[layer]


PERCEPTUALS = ("auto", "clip", "vae", "vgg19")


def resolve(kind: str, vgg19: str, pocket: bool) -> str:
    """'auto' -> vgg19 when a VGG-19 file is given, the pocket CLIP for the pocket world, the VAE otherwise."""
    if kind == "auto":
        return "vgg19" if vgg19 else ("clip" if pocket else "vae")
    if kind == "vgg19" and not vgg19:
        raise ValueError("--moderator.perceptual=vgg19 needs --moderator.vgg19=<a torchvision-format VGG-19 state "
                         "dict file>")
    return kind


def build(kind: str, pipe, device, vgg19: str = "", clip_dir: str = "runs/clip"):
    """The frozen perceptual network named by `kind` (after resolve), as a callable images -> features."""
    if kind == "clip":
        from pocket.pinned import load_clip

        vision = load_clip(clip_dir).vision_model.to(device)
        return lambda x: clip_features(vision, x)
    if kind == "vae":
        return VAEEncoderFeatures(pipe.vae).to(device)
    if kind == "vgg19":
        return load_vgg19(vgg19).to(device)
    raise ValueError(f"unknown perceptual network {kind!r}; choose one of {', '.join(PERCEPTUALS)}")
