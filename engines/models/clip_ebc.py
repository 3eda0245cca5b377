"""CLIP-EBC: blockwise count classification against text prompts (Ma et al., CLIP-EBC).

The image tower (open_clip ModifiedResNet or VisionTransformer at stride 16, or a timm trunk such
as ConvNeXt / MobileCLIP's FastViT at stride 32, the EBC-ZIP backbones) gives a feature map that
is upsampled to the block grid, refined by a residual decoder block and projected into the CLIP
embedding space. Each block's feature is compared (cosine x learnable scale) with the text
features of one prompt per count bin; the softmax over bins weights the bin anchors, giving the
expected count of the block.

The text features are computed once at build and kept as a buffer, so the module maps image ->
density only (what the exported engine runs). Module names follow the official checkpoints
(``image_encoder``, ``image_decoder``, ``projection``, ``logit_scale``, ``vpt_N``).

Example::

    model = ClipEBC.build(small_spec("ebc-tiny-rn"))
    density = model(torch.rand(2, 3, 224, 224))   # (2, 1, 28, 28), counts per 8x8 block
    logits, density = model.forward_train(x)      # logits (2, K, 28, 28) for the CE loss
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engines.models import backbone as bb
from engines.models.bins import make_prompts, official_bins
from engines.models.registry import CountingModel, register_family, register_model
from engines.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


def _shortcut(cin: int, cout: int) -> nn.Module:
    if cin == cout:
        return nn.Identity()
    # keys downsample.0 / downsample.1, as in the official decoder
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1 projected) skip; the ViT decoder block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv + BN with a skip, expansion 1; the ResNet decoder block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


# Official decoder widths per open_clip ResNet (CLIP-EBC make_resnet_layers arguments).
_RN_DECODER = {"RN50": (2048,), "RN101": (2048, 1024), "RN50x4": (1280,), "RN50x16": (1536,),
               "RN50x64": (2048,)}


def _strip_quickgelu(name: str) -> str:
    return name[: -len("-quickgelu")] if name.endswith("-quickgelu") else name


@register_family("clip_ebc")
class ClipEBC(CountingModel):
    """CLIP-EBC counting model; ``forward(x in [0,1]) -> (B, 1, H/8, W/8)`` counts per block.

    Build with :meth:`build` (open_clip weights from ``spec.pretrained`` or random init, text
    features encoded once) or, for weights that come from a checkpoint, ``ClipEBC(spec)`` (random
    tower, zero text buffer, no text tower needed), then ``load_state_dict``. Its prompts describe
    the count bins, not the counted class, so it has no text prompt to switch; it runs on whole
    frames as well as on windows (the official ResNet evaluation).
    """

    title = "CLIP-EBC"
    whole_image = True

    def __init__(self, spec: ModelSpec, visual: nn.Module | None = None,
                 text_features: torch.Tensor | None = None) -> None:
        super().__init__()
        if spec.family != self.family:
            raise ValueError(f"ClipEBC needs a {self.family} spec, got family {spec.family!r}")
        self.spec = spec
        self.block_size = spec.block_size
        cfg = bb.backbone_config(spec)
        embed_dim = int(cfg["embed_dim"])
        visual = visual if visual is not None else bb.vision_tower(spec)
        self.is_resnet = bb.is_resnet(spec)
        self.is_timm = hasattr(visual, "trunk")  # open_clip TimmModel: ConvNeXt, MobileCLIP...
        if self.is_resnet:
            self._adapt_resnet(visual)
            enc_channels = int(cfg["vision_cfg"]["width"]) * 32
            self.encoder_stride = 16
        elif self.is_timm:
            enc_channels, self.encoder_stride = self._adapt_timm(visual)
        else:
            self._adapt_vit(visual, spec)
            enc_channels = int(visual.conv1.out_channels)
            self.encoder_stride = int(visual.conv1.kernel_size[0])
        # Any encoder stride works (ViT-L/14: 14 -> block 8 is a x1.75 resize, as official);
        # the window must be a multiple of both.
        if spec.window[0] % self.encoder_stride or spec.window[1] % self.encoder_stride:
            raise ValueError(f"window {spec.window} must be a multiple of the encoder stride "
                             f"{self.encoder_stride} of {spec.backbone_name}")
        self.image_encoder = visual

        # VPT parameters (ViT only), named vpt_0..vpt_{L-1} like the official checkpoints.
        vit = not (self.is_resnet or self.is_timm)
        if spec.num_vpt and not vit:
            raise ValueError(f"num_vpt={spec.num_vpt}: visual prompts need a ViT backbone, "
                             f"{spec.backbone_name} is not one")
        self.num_vpt = int(spec.num_vpt) if vit else 0
        self.vpt_drop = nn.Dropout(spec.vpt_drop)
        n_layers = len(visual.transformer.resblocks) if vit else 0
        self.vpt_layers = (n_layers if spec.deep_vpt else 1) if self.num_vpt else 0
        if self.num_vpt:
            patch = visual.conv1.kernel_size[0]
            bound = math.sqrt(6.0 / float(3 * patch + enc_channels))  # the official VPT init
            for i in range(self.vpt_layers):
                p = nn.Parameter(torch.empty(self.num_vpt, enc_channels).uniform_(-bound, bound))
                self.register_parameter(f"vpt_{i}", p)
            # VPT: the pretrained tower stays frozen; prompts, decoder and head are trained.
            for p in visual.parameters():
                p.requires_grad_(False)

        kind = spec.decoder if spec.decoder != "auto" else ("bottleneck" if self.is_resnet else "basic")
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        widths = spec.decoder_channels
        if widths is None:
            name = _strip_quickgelu(spec.backbone) if isinstance(spec.backbone, str) else ""
            widths = _RN_DECODER.get(name, (enc_channels,)) if self.is_resnet else (enc_channels,)
        layers, cin = [], enc_channels
        for w in widths:
            layers.append(block(cin, w))
            cin = w
        self.image_decoder = nn.Sequential(*layers)
        # 1x1 projection into the CLIP space; none when the widths already agree (as official)
        self.projection = nn.Conv2d(cin, embed_dim, 1) if cin != embed_dim else nn.Identity()
        self.density_head: nn.Conv2d | None = None
        if spec.head == "density":  # counts regressed per block: no bins, no text features used
            self.density_head = nn.Conv2d(embed_dim, 1, 1)
            nn.init.normal_(self.density_head.weight, std=0.01)
            # softplus(-4) = 0.018 people per block at the start: an empty frame starts near 0
            nn.init.constant_(self.density_head.bias, -4.0)
        for m in [*self.image_decoder.modules(), self.projection]:  # the official init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        k = len(spec.bins)
        if text_features is None:
            text_features = torch.zeros(k, embed_dim)
        if tuple(text_features.shape) != (k, embed_dim):
            raise ValueError(f"text features {tuple(text_features.shape)} do not match "
                             f"{k} bins x embed_dim {embed_dim}")
        self.register_buffer("text_features", text_features.float().clone())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("anchors", torch.tensor(spec.anchors, dtype=torch.float32).view(1, k, 1, 1),
                             persistent=False)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> dict[str, Any]:
        """Bins, one anchor per bin, and one prompt per bin (generated from the bins if none)."""
        k = len(spec.bins)
        if not k:
            raise ValueError(f"a {cls.family} spec needs bins")
        if len(spec.anchors) != k:
            raise ValueError(f"{k} bins but {len(spec.anchors)} anchors")
        if spec.prompts and len(spec.prompts) != k:
            raise ValueError(f"{k} bins but {len(spec.prompts)} prompts")
        return {} if spec.prompts else {"prompts": tuple(make_prompts(spec.bins, spec.prompt_type))}

    @classmethod
    def build(cls, spec: ModelSpec) -> ClipEBC:
        """Full build: open_clip towers (pretrained or random), prompts encoded once."""
        visual, text = bb.load_towers(spec)
        feats = bb.encode_prompts(text, spec, list(spec.prompts))
        return cls(spec, visual=visual, text_features=feats)

    @staticmethod
    def _adapt_resnet(visual: nn.Module) -> None:
        # Drop the attention pool; stride 1 in layer4 (same weights) so the tower ends at /16.
        visual.attnpool = None
        first = visual.layer4[0]
        first.avgpool = nn.Identity()
        if first.downsample is not None and hasattr(first.downsample, "-1"):
            setattr(first.downsample, "-1", nn.Identity())  # open_clip's pre-downsample avgpool
        first.stride = 1

    @staticmethod
    def _adapt_timm(visual: nn.Module) -> tuple[int, int]:
        # The trunk's final feature map is the feature (its pooling/projection head is unused);
        # a small probe gives its width and stride, whatever the timm architecture.
        visual.head = nn.Identity()
        was_training = visual.training
        visual.eval()
        with torch.no_grad():
            probe = visual.trunk.forward_features(torch.zeros(1, 3, 64, 64))
        visual.train(was_training)
        if probe.ndim != 4:
            raise ValueError(f"timm trunk gives {tuple(probe.shape)} features, expected a NCHW map")
        return int(probe.shape[1]), 64 // int(probe.shape[-1])

    @staticmethod
    def _adapt_vit(visual: nn.Module, spec: ModelSpec) -> None:
        # Patch tokens after ln_post are the features: the final projection is not used.
        visual.proj = None
        bb.set_vit_grid(visual, bb.vit_grid(visual, spec.window))

    # -- forward -----------------------------------------------------------------------------

    def _vit_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.image_encoder
        x, gh, gw = bb.vit_embed(v, x)
        b, c = x.shape[0], x.shape[2]
        x = v.ln_pre(x)
        n = self.num_vpt
        for i, blk in enumerate(v.transformer.resblocks):
            if n and i < self.vpt_layers:
                prompts = self.vpt_drop(getattr(self, f"vpt_{i}")).to(x.dtype)
                if i > 0:  # deep VPT: fresh prompts each layer replace the previous ones
                    x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)
                x = torch.cat([x[:, :1], prompts.unsqueeze(0).expand(b, n, c), x[:, 1:]], dim=1)
            x = blk(x)
        if n:
            x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)
        x = v.ln_post(x[:, 1:])
        return x.transpose(1, 2).reshape(b, c, gh, gw)

    def _resnet_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.image_encoder
        x = v.stem(x)
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K, H/b, W/b), density (B, 1, H/b, W/b)) for RGB input in [0, 1]; with the
        density head the logits have no bins (K = 0)."""
        h, w = x.shape[-2:]
        b = self.block_size
        if h % self.encoder_stride or w % self.encoder_stride or h % b or w % b:
            raise ValueError(f"input {(h, w)} must be a multiple of {self.encoder_stride} and of "
                             f"the block size {b} for {self.spec.backbone_name}")
        x = (x - self.mean) / self.std
        if self.is_resnet:
            feats = self._resnet_features(x)
        elif self.is_timm:
            feats = self.image_encoder.trunk.forward_features(x)
        else:
            feats = self._vit_features(x)
        if feats.shape[-2:] != (h // b, w // b):
            feats = F.interpolate(feats, size=(h // b, w // b), mode="bilinear", align_corners=False)
        feats = self.projection(self.image_decoder(feats))
        if self.density_head is not None:
            density = F.softplus(self.density_head(feats))
            return density.new_zeros((density.shape[0], 0, *density.shape[2:])), density
        feats = F.normalize(feats, dim=1)
        logits = self.logit_scale.exp() * torch.einsum("bdhw,kd->bkhw", feats, self.text_features)
        probs = logits.softmax(dim=1)
        density = (probs * self.anchors).sum(dim=1, keepdim=True)
        return logits, density

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Counts per ``block_size`` cell, (B, 1, H/b, W/b), for RGB input in [0, 1]."""
        return self.forward_train(x)[1]


# -- named specs: tiny random-init configs for tests and CPU experiments ----------------------


@register_model("ebc-tiny-rn")
def _ebc_tiny_rn() -> ModelSpec:
    bins, anchors = official_bins("sha", 4)
    backbone = {"name": "tiny-rn", "embed_dim": 64,
                "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 224,
                               "head_width": 64},
                "text_cfg": bb.tiny_text_config()}
    return ModelSpec(family="clip_ebc", backbone=backbone, window=(224, 224), block_size=8,
                     bins=tuple(bins), anchors=tuple(anchors), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     decoder_channels=(128,), name="ebc-tiny-rn", dataset="sha", truncation=4)


@register_model("ebc-tiny-vit")
def _ebc_tiny_vit() -> ModelSpec:
    bins, anchors = official_bins("sha", 4)
    backbone = {"name": "tiny-vit", "embed_dim": 64,
                "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16, "head_width": 32,
                               "image_size": 224},
                "text_cfg": bb.tiny_text_config()}
    return ModelSpec(family="clip_ebc", backbone=backbone, window=(224, 224), block_size=8,
                     bins=tuple(bins), anchors=tuple(anchors), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     num_vpt=4, deep_vpt=True, name="ebc-tiny-vit", dataset="sha", truncation=4)
