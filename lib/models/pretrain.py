"""A local stand-in for CLIP/AugReg pre-training: a generated glyph corpus and a seeded classification run.

No hub is reachable on the reference machines, so the method's "pre-trained model" is built here:
letters (never digits, and no letter that looks like one) rendered in every font PIL can find,
in random colours on random backgrounds (solid, gradients, colour noise, stripes), scaled,
rotated, shifted, thickened and blurred, at 32x32.  A ``cnn:`` (or any registered) model learns
to tell the letters apart; its backbone is then saved as a checkpoint that ``build_model(...,
pretrained=PATH)`` loads like downloaded weights.  Colour is random and independent of the class,
so the features it teaches are colour-invariant -- which is what lets a fine-tuned model
survive an unseen tint, as CLIP does in the paper.  It is a stand-in, not CLIP: tiny, one
domain (glyphs), minutes of CPU.

Every image is a function of (seed, batch number): the run is deterministic, and batches are
drawn fresh each step (no stored corpus), so the corpus is as large as the run is long.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from askshift.lib.models.device import resolve_device
from askshift.lib.models.families import build_model
from askshift.lib.models.training import SEED_LOCK, place_images, place_model
from askshift.lib.store import atomic_save_torch, content_hash, load_torch

# Letters whose glyphs resemble a digit in some font (O/0, I/l/1, S/5, Z/2, B/8, b/6, g/q/9, G/6, T/7)
# are left out so the corpus is disjoint from the digits task in shape, not only in label.
EXCLUDED = set("OoIilSsZzBbgqGTt")
CHARACTERS: tuple[str, ...] = tuple(c for c in "ABCDEFHJKLMNPQRUVWXYacdefhjkmnpruvwxy" if c not in EXCLUDED)

GLYPH_SIZE = 48  # glyphs are rendered once at this size, then warped down to the image size
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")


class PretrainConfig(BaseModel):
    """Everything that determines a pre-trained checkpoint (its content hash names the cache entry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("cnn:small", description="architecture to pre-train (a registered model name)")
    steps: int = Field(800, ge=1, description="optimisation steps (one fresh batch each)")
    batch_size: int = Field(128, ge=1, description="glyph images per step")
    lr: float = Field(3e-3, gt=0, description="learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    image_size: int = Field(32, ge=8, description="side of the rendered glyph images in pixels")
    seed: int = Field(0, ge=0, description="seed of the glyph corpus and the initialisation; 0 or more")
    max_fonts: int = Field(24, ge=1, description="at most this many fonts (sorted by path, so runs are reproducible)")
    val_batches: int = Field(8, ge=1, description="held-out batches (seeds never used for training) to report accuracy")
    # What the corpus covers beyond upright glyphs. CLIP's data hold flipped, rotated and tinted images of every kind;
    # the stand-in must too, or fine-tuning it cannot show the paper's mechanism on the out-of-support shifts.
    flip_p: float = Field(0.5, ge=0, le=1, description="share of glyphs flipped upside down; half as many are "
                                                       "mirrored: a flipped glyph keeps its label, as a photo does")
    quarter_turn_p: float = Field(0.2, ge=0, le=1, description="share of glyphs turned by 90, 180 or 270 degrees")
    tint_p: float = Field(0.3, ge=0, le=1, description="share of images blended with a random colour (alpha 0.1-0.4)")
    clutter_p: float = Field(0.3, ge=0, le=1, description="share of images with distractor strokes")


# --- fonts and glyph masks ------------------------------------------------------------------------
def find_fonts(max_fonts: int | None = None) -> list[str]:
    """TrueType/OpenType fonts on this machine, sorted; PIL's bundled font is always added as ''."""
    paths: set[str] = set()
    for d in FONT_DIRS:
        root = Path(d).expanduser()
        if root.is_dir():
            for ext in ("*.ttf", "*.otf", "*.TTF", "*.OTF"):
                paths.update(str(p) for p in root.rglob(ext))
    fonts = sorted(paths)
    if max_fonts is not None:
        fonts = fonts[: max(0, max_fonts - 1)]
    return fonts + [""]  # "" = PIL's default font (bundled with Pillow), so the corpus never has zero fonts


def _load_font(path: str, size: int):
    from PIL import ImageFont

    if path:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: a fixed-size bitmap font (still usable, just blockier)
        return ImageFont.load_default()


def render_glyphs(characters: tuple[str, ...], fonts: list[str], size: int = GLYPH_SIZE) -> torch.Tensor:
    """(classes, fonts, size, size) masks in [0, 1]: each glyph centred by its ink bounding box."""
    from PIL import Image, ImageDraw

    masks = np.zeros((len(characters), len(fonts), size, size), np.float32)
    for j, path in enumerate(fonts):
        font = _load_font(path, int(size * 0.75))
        for i, ch in enumerate(characters):
            img = Image.new("L", (size * 2, size * 2), 0)
            draw = ImageDraw.Draw(img)
            draw.text((size // 2, size // 2), ch, fill=255, font=font)
            box = img.getbbox()
            if box is None:  # the font has no glyph for this character: leave the mask empty
                continue
            glyph = img.crop(box)
            scale = (size * 0.8) / max(glyph.size)  # largest side fills 80% of the canvas
            glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BILINEAR)
            canvas = Image.new("L", (size, size), 0)
            canvas.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
            masks[i, j] = np.asarray(canvas, np.float32) / 255.0
    return torch.from_numpy(masks)


# --- the generator ----------------------------------------------------------------------------------
@dataclass
class GlyphCorpus:
    """Draws batches of coloured, warped letter images; batch ``k`` depends only on (seed, k)."""

    masks: torch.Tensor  # (classes, fonts, G, G)
    image_size: int = 32
    seed: int = 0
    flip_p: float = 0.0
    quarter_turn_p: float = 0.0
    tint_p: float = 0.0
    clutter_p: float = 0.0

    @property
    def num_classes(self) -> int:
        return self.masks.shape[0]

    def batch(self, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        labels = torch.randint(0, self.num_classes, (n,), generator=g)
        font = torch.randint(0, self.masks.shape[1], (n,), generator=g)
        valid = self.masks[labels, font].flatten(1).amax(1) > 0
        font = torch.where(valid, font, torch.zeros_like(font))  # missing glyph -> first font
        mask = self.masks[labels, font].unsqueeze(1)  # (n, 1, G, G)

        # Stroke thickness: dilate some glyphs (handwritten digits have thick, blobby strokes).
        thick = u(n) < 0.4
        if thick.any():
            mask[thick] = nn.functional.max_pool2d(mask[thick], 3, stride=1, padding=1)

        # Geometry: scale, rotation (+-25 deg), shear, translation -- one affine warp per image.
        scale = 0.6 + 0.55 * u(n)
        angle = (u(n) - 0.5) * math.radians(50)
        shear = (u(n) - 0.5) * 0.4
        tx, ty = (u(n) - 0.5) * 0.5, (u(n) - 0.5) * 0.5
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = nn.functional.affine_grid(theta, (n, 1, self.image_size, self.image_size), align_corners=False)
        mask = nn.functional.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = self._reorient(mask, u, g)
        mask = torch.maximum(mask, self._clutter(n, u, g))

        fg, bg = self._colours(n, u, g), self._backgrounds(n, u, g)
        # Keep the glyph readable: where foreground and background luminance are too close, use the complement.
        lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        fg_lum = (fg * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        bg_lum = (bg * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        low = (fg_lum - bg_lum).abs() < 0.3
        # Keep the hue, move the brightness away from the background's.
        fg = torch.where(low & (bg_lum > 0.5), fg * 0.3, torch.where(low, 0.65 + 0.35 * fg, fg))
        img = bg * (1 - mask) + fg * mask

        # Blur by resampling through a low resolution (8..32 px), like upsampled 8x8 digits.
        res = torch.tensor([8, 12, 16, 24, self.image_size])[torch.randint(0, 5, (n,), generator=g)]
        for r in res.unique().tolist():
            if r >= self.image_size:
                continue
            sel = res == r
            small = nn.functional.interpolate(img[sel], size=(r, r), mode="area")
            img[sel] = nn.functional.interpolate(small, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        tinted = (u(n, 1, 1, 1) < self.tint_p).float()
        alpha = tinted * (0.1 + 0.3 * u(n, 1, 1, 1))
        img = img * (1 - alpha) + u(n, 3, 1, 1) * alpha
        img = img + 0.03 * u(n, 1, 1, 1) * torch.randn(img.shape, generator=g)
        return img.clamp_(0, 1), labels

    def _reorient(self, mask: torch.Tensor, u: Callable, g: torch.Generator) -> torch.Tensor:
        """Upside-down and mirrored glyphs, and quarter turns: orientations a photo corpus holds and digits do not."""
        n = mask.shape[0]
        vflip, hflip = u(n) < self.flip_p, u(n) < self.flip_p / 2
        mask = torch.where(vflip.view(n, 1, 1, 1), mask.flip(2), mask)
        mask = torch.where(hflip.view(n, 1, 1, 1), mask.flip(3), mask)
        turns = torch.where(u(n) < self.quarter_turn_p, torch.randint(1, 4, (n,), generator=g), torch.zeros(n, dtype=torch.long))
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                mask[sel] = torch.rot90(mask[sel], k, dims=(2, 3))
        return mask

    def _clutter(self, n: int, u: Callable, g: torch.Generator) -> torch.Tensor:
        """Thin distractor strokes (a line at a random place and angle) drawn in the glyph's colour."""
        s = self.image_size
        yy = torch.linspace(-1, 1, s).view(1, 1, s, 1)
        xx = torch.linspace(-1, 1, s).view(1, 1, 1, s)
        angle = u(n, 1, 1, 1) * math.pi
        offset = (u(n, 1, 1, 1) - 0.5) * 1.6
        distance = (xx * torch.cos(angle) + yy * torch.sin(angle) - offset).abs()
        line = (distance < 0.04 + 0.04 * u(n, 1, 1, 1)).float()
        return line * (u(n, 1, 1, 1) < self.clutter_p).float()

    def _colours(self, n: int, u: Callable, g: torch.Generator) -> torch.Tensor:
        """Glyph colours: random RGB, a third of them grey; a quarter get a gradient across the glyph."""
        a, b = u(n, 3, 1, 1), u(n, 3, 1, 1)
        grey = u(n, 1, 1, 1) < 0.33
        a = torch.where(grey, a.mean(1, keepdim=True).expand_as(a), a)
        b = torch.where(grey, b.mean(1, keepdim=True).expand_as(b), b)
        ramp = self._ramp(n, u)
        grad = (u(n, 1, 1, 1) < 0.25).float()
        return a * (1 - grad * ramp) + b * grad * ramp

    def _backgrounds(self, n: int, u: Callable, g: torch.Generator) -> torch.Tensor:
        """Solid colour, two-colour gradient, low-frequency colour noise, or stripes (equal shares)."""
        s = self.image_size
        a, b = u(n, 3, 1, 1), u(n, 3, 1, 1)
        grey = u(n, 1, 1, 1) < 0.33
        a = torch.where(grey, a.mean(1, keepdim=True).expand_as(a), a)
        b = torch.where(grey, b.mean(1, keepdim=True).expand_as(b), b)
        kind = torch.randint(0, 4, (n, 1, 1, 1), generator=g)
        ramp = self._ramp(n, u)
        noise = nn.functional.interpolate(u(n, 3, 4, 4), size=(s, s), mode="bilinear", align_corners=False)
        noise = a * 0.5 + noise * 0.5
        freq = 2 + 4 * u(n, 1, 1, 1)
        phase = u(n, 1, 1, 1) * 6.283
        yy = torch.linspace(0, 1, s).view(1, 1, s, 1)
        xx = torch.linspace(0, 1, s).view(1, 1, 1, s)
        dirn = u(n, 1, 1, 1)
        stripes = (torch.sin((xx * dirn + yy * (1 - dirn)) * freq * 6.283 + phase) > 0).float()
        solid = a.expand(n, 3, s, s)
        gradient = a * (1 - ramp) + b * ramp
        striped = a * (1 - stripes) + (0.5 * a + 0.5 * b) * stripes
        return torch.where(kind == 0, solid, torch.where(kind == 1, gradient, torch.where(kind == 2, noise, striped)))

    def _ramp(self, n: int, u: Callable) -> torch.Tensor:
        s = self.image_size
        angle = u(n, 1, 1, 1) * 6.283
        yy = torch.linspace(-1, 1, s).view(1, 1, s, 1)
        xx = torch.linspace(-1, 1, s).view(1, 1, 1, s)
        return ((xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.5 + 0.5).clamp(0, 1)


def make_corpus(config: PretrainConfig) -> tuple[GlyphCorpus, list[str]]:
    fonts = find_fonts(config.max_fonts)
    return GlyphCorpus(render_glyphs(CHARACTERS, fonts), config.image_size, config.seed, flip_p=config.flip_p,
                       quarter_turn_p=config.quarter_turn_p, tint_p=config.tint_p, clutter_p=config.clutter_p), fonts


# --- the pre-training run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainResult:
    path: Path
    val_accuracy: float
    seconds: float
    cached: bool


def pretrain(
    config: PretrainConfig,
    out: str | Path,
    device: torch.device | str = "auto",
    progress: Callable[[str], None] | None = print,
    force: bool = False,
) -> PretrainResult:
    """Pre-train ``config.model`` on the glyph corpus and save it atomically at ``out``.

    If ``out`` already holds a checkpoint made with the same config it is reused (``cached=True``).
    """
    out = Path(out)
    key = content_hash(config)
    if out.exists() and not force:
        try:
            meta = load_torch(out).get("meta", {})
        except Exception:  # unreadable or foreign file: rebuild it
            meta = {}
        if meta.get("config_hash") == key:
            if progress:
                progress(f"pretrain: reusing {out} (same config, val accuracy {meta.get('val_accuracy', float('nan')):.3f})")
            return PretrainResult(out, float(meta.get("val_accuracy", float("nan"))), 0.0, True)

    device = resolve_device(device)
    start = time.time()
    with SEED_LOCK:  # the one seeding lock (askshift.lib.models.training): initial weights follow config.seed only
        torch.manual_seed(config.seed)
        corpus, fonts = make_corpus(config)
        model = place_model(build_model(config.model, corpus.num_classes, img_size=config.image_size), device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps)))
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    if progress:
        progress(f"pretrain: {config.model} on generated letter glyphs ({corpus.num_classes} classes, {len(fonts)} fonts), "
                 f"{config.steps} steps x {config.batch_size} images -- a local stand-in for CLIP/AugReg pre-training")
    model.train()
    report_every = max(1, config.steps // 10)
    running = 0.0
    for step in range(config.steps):
        x, y = corpus.batch(step, config.batch_size)
        x, y = place_images(x, device), y.to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if progress and ((step + 1) % report_every == 0 or step + 1 == config.steps):
            done = (step + 1) / config.steps
            elapsed = time.time() - start
            progress(f"pretrain: step {step + 1}/{config.steps}  loss {running / ((step % report_every) + 1):.3f}  "
                     f"{elapsed:.0f}s elapsed, ~{elapsed / done - elapsed:.0f}s left")
            running = 0.0
    accuracy = evaluate_corpus(model, corpus, config, device)
    seconds = time.time() - start
    meta = {
        "config": config.model_dump(mode="json"),
        "config_hash": key,
        "characters": "".join(CHARACTERS),
        "fonts": [Path(f).name if f else "PIL default" for f in fonts],
        "val_accuracy": accuracy,
        "seconds": seconds,
        "note": "askshift pretrain: generated-glyph stand-in for CLIP/AugReg pre-training",
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save_torch(out, {"model": state, "meta": meta})
    if progress:
        progress(f"pretrain: held-out glyph accuracy {accuracy:.3f}; saved {out} ({seconds:.0f}s)")
    return PretrainResult(out, accuracy, seconds, False)


@torch.no_grad()
def evaluate_corpus(model: nn.Module, corpus: GlyphCorpus, config: PretrainConfig, device: torch.device) -> float:
    """Accuracy on batches whose numbers no training step uses (negative batch ids)."""
    model.eval()
    correct = total = 0
    for k in range(config.val_batches):
        x, y = corpus.batch(-1 - k, config.batch_size)
        correct += (model(place_images(x, device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train()
    return correct / max(1, total)


def content_hash_default() -> str:
    return content_hash(PretrainConfig())
