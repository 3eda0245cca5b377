"""CLIP-Count: text-guided zero-shot density regression (Jiang et al., ACM MM 2023).

A frozen CLIP ViT with deep visual prompts encodes the window (resized to ``encoder_size``
inside the model); its patch tokens are projected to the text embedding space, interact with the
embedding of the class prompt ("people", "cars") in two patch-text blocks (self-attention,
cross-attention to the single text token, MLP; the second block after a residual conv and x2
upsampling), and a conv decoder regresses a full-window density in [0, 1] (sigmoid). The model was
trained on densities scaled by ``density_scale`` (60), so objects per pixel = output / 60.

The prompt's embedding is computed once (text tower + learnable context) and kept as the buffer
``text_embedding``; :meth:`ClipCount.set_text_prompt` recomputes it for another class, caching
per prompt. Module and parameter names follow the official checkpoint (minus ``model.``).

Example::

    model = ClipCount.build(small_spec("count-tiny"))
    per_pixel = model(torch.rand(1, 3, 128, 128))   # (1, 1, 128, 128), sum = count
    model.set_text_prompt("cars")
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engines.models import backbone as bb
from engines.models.registry import CountingModel, register_family, register_model
from engines.models.spec import CLIP_MEAN, CLIP_STD, ModelSpec


def sincos_1d(dim: int, length: int) -> torch.Tensor:
    """Fixed 1-D sine/cosine position table (length, dim): sin on even, cos on odd channels."""
    if dim % 2:
        raise ValueError(f"sin-cos position table needs an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, heads: int, drop: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class CrossAttention(nn.Module):
    """Patches (queries) attend to the text token(s) (keys/values); keys ``wq``/``wk``/``wv``."""

    def __init__(self, dim: int, heads: int, drop: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.wq = nn.Linear(dim, dim, bias=True)
        self.wk = nn.Linear(dim, dim, bias=True)
        self.wv = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, nx, c = x.shape
        h = self.heads
        q = self.wq(x).reshape(b, nx, h, c // h).transpose(1, 2)
        k = self.wk(y).reshape(b, y.shape[1], h, c // h).transpose(1, 2)
        v = self.wv(y).reshape(b, y.shape[1], h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, nx, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class PatchTextBlock(nn.Module):
    """One level of the patch-text interaction module.

    ``upsample > 1``: first a residual GELU 3x3 conv on the 2-D token map and bilinear upsampling
    (the second, finer level); then self-attention, cross-attention to the text, MLP, each
    pre-norm with a residual.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop: float = 0.1,
                 drop_path: float = 0.1, upsample: int = 1) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm0 = nn.LayerNorm(dim)
        self.conv0 = nn.Conv2d(dim, dim, 3, padding=1)  # present (unused) at level 1, as official
        self.selfattn = SelfAttention(dim, heads, drop)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.upsample > 1:
            b, n, c = x.shape
            m = x.transpose(1, 2).reshape(b, c, grid[0], grid[1])
            m = m + F.gelu(self.conv0(m))
            grid = (grid[0] * self.upsample, grid[1] * self.upsample)
            m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
            x = m.flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.selfattn(self.norm0(x)))
        x = x + self.drop_path(self.attn(self.norm1(x), text))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, grid


def _conv_gn_gelu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(8, cout), nn.GELU())


class DensityDecoder(nn.Module):
    """Four conv stages halving the channels, x2 upsampling between them, the finer interaction
    level added after stage 1, resized to the window, 1x1 conv, sigmoid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        chans = [dim // (2 ** i) for i in range(5)]
        if chans[-1] % 8 or chans[-1] < 8:
            raise ValueError(f"CLIP-Count decoder needs embed_dim a multiple of 128, got {dim}")
        self.convs = nn.ModuleList(_conv_gn_gelu(chans[i], chans[i + 1], 3) for i in range(4))
        self.final_conv = nn.Sequential(nn.Conv2d(chans[4], 1, 1))
        self.pyradim_conv = _conv_gn_gelu(dim, dim // 2, 1)
        for conv in self.convs:
            nn.init.xavier_normal_(conv[0].weight)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        x = coarse
        for i, conv in enumerate(self.convs):
            if i == 1:
                x = x + self.pyradim_conv(fine)
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            else:
                x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.final_conv(x))


class PromptedViT(nn.Module):
    """open_clip ViT (frozen, at ``vit``) with deep visual prompts through a shared projection.

    Prompts ``visual_prompt`` (depth, tokens, width): layer 0 gets ``proj(prompt[0])`` inserted
    after CLS before ``ln_pre``; layers 1..depth-1 get theirs replaced by ``proj(prompt[i-1])``;
    at layer ``depth`` they are removed. All tokens are normalised by ``vpt_norm`` (not
    ``ln_post``). This reproduces the released model's indexing exactly.
    """

    def __init__(self, vit: nn.Module, depth: int, tokens: int) -> None:
        super().__init__()
        self.vit = vit
        width = int(vit.conv1.out_channels)
        layers = len(vit.transformer.resblocks)
        if not 2 <= depth < layers:
            raise ValueError(f"CLIP-Count needs 2 <= vpt_depth < {layers} layers, got {depth}")
        if tokens < 1:
            raise ValueError(f"CLIP-Count needs num_vpt >= 1 visual prompt tokens, got {tokens}")
        self.depth, self.tokens = depth, tokens
        patch = vit.conv1.kernel_size[0] * vit.conv1.kernel_size[1]
        bound = math.sqrt(6.0 / float(3 * patch + width))
        self.visual_prompt = nn.Parameter(torch.empty(depth, tokens, width).uniform_(-bound, bound))
        self.vpt_proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.vpt_proj.weight, a=0, mode="fan_out")
        self.vpt_dropout = nn.Dropout(0.1)
        self.vpt_norm = nn.LayerNorm(width, eps=1e-6)
        for p in vit.parameters():
            p.requires_grad_(False)

    def _prompt(self, i: int, b: int) -> torch.Tensor:
        p = self.vpt_dropout(self.vpt_proj(self.visual_prompt[i]))
        return p.unsqueeze(0).expand(b, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + gh*gw, width) after the last block and ``vpt_norm``."""
        v = self.vit
        x, gh, gw = bb.vit_embed(v, x)
        b = x.shape[0]
        n = self.tokens
        x = torch.cat([x[:, :1], self._prompt(0, b).to(x.dtype), x[:, 1:]], dim=1)
        x = v.ln_pre(x)
        for i, blk in enumerate(v.transformer.resblocks):
            if 0 < i < self.depth:
                x = torch.cat([x[:, :1], self._prompt(i - 1, b).to(x.dtype), x[:, 1 + n :]], dim=1)
            elif i == self.depth:
                x = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)
            x = blk(x)
        return self.vpt_norm(x)


class TextContext(nn.Module):
    """Holds the learnable CoOp context vectors (key ``text_encoder.learnable_context``)."""

    def __init__(self, n_ctx: int, width: int) -> None:
        super().__init__()
        self.learnable_context = nn.Parameter(torch.randn(n_ctx, width) * 0.02)


@torch.no_grad()
def encode_class_prompt(text: nn.Module, spec: ModelSpec, prompt: str,
                        context: torch.Tensor | None) -> torch.Tensor:
    """The (1, embed_dim) embedding of ``prompt`` with CoOp context, as the released model does.

    The context vectors go right after the start token (the sequence's last ``n_ctx`` positions
    drop off) and the feature is read at the EOT index of the *original* tokens - as in the
    official encoder, whose trained decoder expects exactly this feature. Not L2-normalised.

    Consequence of that index (with the causal text mask): for a one-token class name the feature
    position holds the last context vector and never sees the class, so "people" and "cars" give
    the same embedding with the released weights. ``spec.coop_eot_fix`` reads the real EOT
    position instead (for models trained that way).
    """
    t = bb.text_parts(text)
    tokens = bb.tokenizer_for(spec)([prompt]).to(t.token_embedding.weight.device)
    x = t.token_embedding(tokens)
    if context is not None and context.shape[0] > 0:
        n = context.shape[0]
        ctx = context.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1:-n]], dim=1)
    x = x + t.positional_embedding.to(x.dtype)
    x = t.transformer(x, attn_mask=t.attn_mask)
    x = t.ln_final(x)
    eot = tokens.argmax(dim=-1)
    if spec.coop_eot_fix and context is not None:
        eot = (eot + context.shape[0]).clamp(max=tokens.shape[1] - 1)
    x = x[torch.arange(x.shape[0]), eot]
    proj = t.text_projection
    x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x.float().cpu()


@register_family("clip_count")
class ClipCount(CountingModel):
    """CLIP-Count; ``forward(x in [0,1]) -> (B, 1, H, W)`` objects per pixel (sum = count).

    ``block_size`` is 1. Build with :meth:`build` (towers from ``spec.pretrained`` or random), or
    ``ClipCount(spec)`` then ``load_state_dict`` for weights from a checkpoint. The counted class
    is the text prompt built in (:meth:`set_text_prompt` switches it); the window is resized to
    the encoder's input inside, so it sees fixed windows only.
    """

    title = "CLIP-Count"
    text_prompted = True

    def __init__(self, spec: ModelSpec, visual: nn.Module | None = None,
                 text_embedding: torch.Tensor | None = None) -> None:
        super().__init__()
        if spec.family != self.family:
            raise ValueError(f"ClipCount needs a {self.family} spec, got family {spec.family!r}")
        if bb.is_resnet(spec):
            raise ValueError("CLIP-Count needs a ViT backbone")
        self.spec = spec
        self.block_size = spec.block_size
        if spec.block_size != 1:
            raise ValueError(f"CLIP-Count predicts per pixel: block_size must be 1, got {spec.block_size}")
        cfg = bb.backbone_config(spec)
        dim = int(cfg["embed_dim"])
        visual = visual if visual is not None else bb.vision_tower(spec)
        visual.proj = None  # the CLS path (ln_post + proj) only feeds the contrastive loss
        enc = spec.encoder_size or int(cfg["vision_cfg"].get("image_size", 224))
        self.encoder_size = (enc, enc)
        grid = bb.vit_grid(visual, self.encoder_size)
        bb.set_vit_grid(visual, grid)
        self.grid = grid
        width = int(visual.conv1.out_channels)
        self.img_encoder = PromptedViT(visual, spec.vpt_depth, spec.num_vpt)
        text_width = int(cfg["text_cfg"].get("width", 512))
        self.text_encoder = TextContext(spec.n_ctx, text_width)
        self.patch_feat_proj = nn.Linear(width, dim)
        nn.init.xavier_normal_(self.patch_feat_proj.weight)
        self.patch_feat_proj_contrast = nn.Linear(width, dim)  # contrastive pre-training only
        n_tok = grid[0] * grid[1]
        self.patch_emb_pos_embed = nn.Parameter(sincos_1d(dim, n_tok).unsqueeze(0), requires_grad=False)
        self.decoder_ln_pre = nn.LayerNorm(dim)  # in the released weights, unused by the forward
        self.fim_blocks = nn.ModuleList([PatchTextBlock(dim, spec.heads, upsample=1),
                                         PatchTextBlock(dim, spec.heads, upsample=2)])
        self.decoder_norm = nn.LayerNorm(dim)  # idem (only the non-hierarchical variant uses it)
        self.density_decoder = DensityDecoder(dim)
        if text_embedding is None:
            text_embedding = torch.zeros(1, dim)
        self.register_buffer("text_embedding", text_embedding.reshape(1, 1, dim).float().clone())
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, spec: ModelSpec) -> ClipCount:
        """Towers from ``spec.pretrained`` (or random), prompt ``spec.text_prompt`` encoded once."""
        visual, text = bb.load_towers(spec)
        model = cls(spec, visual=visual)
        model.set_text_prompt(spec.text_prompt, text=text)
        return model

    def set_text_prompt(self, prompt: str, text: nn.Module | None = None) -> None:
        """Switch the counted class; the embedding is computed once per prompt and cached.

        ``text`` is the text model; by default it is rebuilt from the spec (open_clip weights
        ``spec.pretrained``, or the seeded random tower of a random-init model).
        """
        if not prompt or not prompt.strip():
            raise ValueError("text prompt must be a non-empty class name such as 'people'")
        key = prompt.strip()
        emb = self._prompt_cache.get(key)
        if emb is None:
            if text is None:
                text = bb.load_towers(self.spec)[1] if self.spec.pretrained else bb.text_tower(self.spec)
            emb = encode_class_prompt(text, self.spec, key, self.text_encoder.learnable_context.detach().cpu())
            self._prompt_cache[key] = emb
        self.text_embedding.copy_(emb.reshape(self.text_embedding.shape))
        if key != self.spec.text_prompt:
            self.spec = self.spec.replace(text_prompt=key)

    def forward_density(self, x: torch.Tensor) -> torch.Tensor:
        """The raw (B, 1, H, W) density in [0, 1] (``density_scale`` x objects per pixel)."""
        out_size = (x.shape[-2], x.shape[-1])
        x = (x - self.mean) / self.std
        if out_size != self.encoder_size:
            # plain bilinear, no antialiasing: what torchvision's tensor Resize did when the
            # released model was trained (normalising first is equivalent: both are linear)
            x = F.interpolate(x, size=self.encoder_size, mode="bilinear", align_corners=False)
        tokens = self.img_encoder(x)
        b = tokens.shape[0]
        feats = self.patch_feat_proj(tokens[:, 1:]) + self.patch_emb_pos_embed
        text = self.text_embedding.expand(b, -1, -1)
        levels = []
        grid = self.grid
        for blk in self.fim_blocks:
            feats, grid = blk(feats, text, grid)
            levels.append(feats.transpose(1, 2).reshape(b, -1, grid[0], grid[1]))
        return self.density_decoder(levels[0], levels[1], out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Objects per pixel, (B, 1, H, W), for RGB input in [0, 1]."""
        return self.forward_density(x) / self.spec.density_scale


# -- named specs: a tiny random-init config for tests and CPU experiments ---------------------


@register_model("count-tiny")
def _count_tiny() -> ModelSpec:
    backbone = {"name": "tiny-vit3", "embed_dim": 128,
                "vision_cfg": {"layers": 3, "width": 64, "patch_size": 16, "head_width": 32,
                               "image_size": 64},
                "text_cfg": bb.tiny_text_config()}
    return ModelSpec(family="clip_count", backbone=backbone, window=(128, 128), block_size=1,
                     mean=CLIP_MEAN, std=CLIP_STD, resize_height=128, encoder_size=64,
                     num_vpt=4, vpt_depth=2, heads=4, text_prompt="people", density_scale=60.0,
                     name="count-tiny")
