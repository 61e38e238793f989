"""Paired CDA samples: each item holds an original training image and its augmented copy.

Wraps any classification data set that offers
    load_example(idx) -> (name, uint8 HWC image, float32 (K,) label)
    transform(img_uint8_hwc, rng) -> float32 CHW          (resize / flip / normalise / crop)
    rng_for(idx) -> np.random.Generator, set_epoch(epoch), seed, __len__
views='independent' (default, as CDA's VOC12ClassificationAugDataset): the original goes through
`transform` with base.rng_for(idx) and the copy with its own generator (seed, epoch, idx, VIEW_STREAM),
so the copy gets its own resize, flip and crop: generally another view of the scene. views='shared'
(ours): both use base.rng_for(idx), so they get the same geometry and differ only where the object was
pasted. The paste draws from its own generator seeded by (seed, epoch, idx, PASTE_STREAM): nothing
depends on which loader worker builds the item, and the draws change from epoch to epoch.
"""
import numpy as np
import torch
from PIL import Image, ImageDraw

from cda.paste import paste_instances
from misc.pyutils import atomic_path

PASTE_STREAM = 0xCDA  # keeps the paste stream apart from the base data set's own (seed, epoch, idx) streams
VIEW_STREAM = 0xC0B  # the copy's own resize/flip/crop draws (views='independent')
VIEWS = ("independent", "shared")


class PairedDataset(torch.utils.data.Dataset):
    """Item: {'name', 'img', 'label', 'img_aug', 'label_aug', 'num_pasted'}.

    'num_pasted' (int) is 0 when the image already holds every class the pool has: DataLoader
    workers work on copies of this object, so the training loop sums it from the batches.
    Call set_epoch on this object (it forwards to the base) before each epoch.
    """

    def __init__(self, base, pool, seed=None, views="independent", **paste_kwargs):
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        self.views = views
        self.base = base
        self.pool = pool
        self.seed = int(base.seed if seed is None else seed)
        self.paste_kwargs = paste_kwargs
        self.epoch = 0

    def __len__(self):
        return len(self.base)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def paste_rng(self, idx):
        return np.random.default_rng([self.seed, self.epoch, int(idx), PASTE_STREAM])

    def copy_view_rng(self, idx):
        if self.views == "shared":
            return self.base.rng_for(idx)
        return np.random.default_rng([self.seed, self.epoch, int(idx), VIEW_STREAM])

    def augment(self, idx):
        """(name, img, label, img_aug, label_aug, pasted_mask) before the training transform."""
        name, img, label = self.base.load_example(idx)
        aug, label_aug, pasted = paste_instances(img, label, self.pool, self.paste_rng(idx), **self.paste_kwargs)
        return name, img, label, aug, label_aug, pasted

    def __getitem__(self, idx):
        name, img, label, aug, label_aug, _ = self.augment(idx)
        return {
            "name": name,
            "img": self.base.transform(img, self.base.rng_for(idx)),
            "label": np.array(label, np.float32),  # a copy: the base may hand out its own array
            "img_aug": self.base.transform(aug, self.copy_view_rng(idx)),
            "label_aug": label_aug,
            "num_pasted": int((label_aug > 0).sum() - (np.asarray(label) > 0).sum()),
        }


def _fit_height(arr, height):
    im = Image.fromarray(arr)
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)


def _to_uint8_view(chw):
    """A normalised CHW training view back to uint8 HWC for looking at (ImageNet mean/std)."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = np.asarray(chw, np.float32).transpose(1, 2, 0) * std + mean
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def sample_grid(paired, n, path, height=160, caption=18):
    """Write a picture of n items: original | augmented copy | pasted region (full images before the
    training transform), then the two training views (original's and copy's resize/flip/crop, padding
    shown in the mean colour), each row captioned with the id and the pasted classes. Uses the current
    epoch's draws, i.e. exactly what training sees."""
    names = paired.pool.class_names
    rows = []
    for idx in range(min(n, len(paired))):
        name, img, label, aug, label_aug, pasted = paired.augment(idx)
        added = [names[c] for c in np.flatnonzero((label_aug > 0) & ~(np.asarray(label) > 0))]
        text = f"{name}: + {', '.join(added)}" if added else f"{name}: no paste (every pool class present)"
        text += f"   | training views ({paired.views})"
        region = np.where(pasted[..., None] > 0, 255, 0).astype(np.uint8).repeat(3, axis=2)
        views = [_to_uint8_view(paired.base.transform(img, paired.base.rng_for(idx))),
                 _to_uint8_view(paired.base.transform(aug, paired.copy_view_rng(idx)))]
        panels = [_fit_height(a, height) for a in (img, aug, region, *views)]
        rows.append((text, panels))
    width = max([sum(p.width for p in panels) + 4 * len(panels) for _, panels in rows] + [200])
    grid = Image.new("RGB", (width, max(1, len(rows)) * (height + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (text, panels) in enumerate(rows):
        y = r * (height + caption)
        draw.text((4, y + 3), text, fill=(0, 0, 0))
        x = 0
        for p in panels:
            grid.paste(p, (x, y + caption))
            x += p.width + 4
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
