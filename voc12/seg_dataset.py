"""Training data of the segmentation network: images with the pseudo masks of a folder, augmented as
kazuto1011/deeplab-pytorch does (libs/datasets/base.py, _augmentation): rescale by a factor drawn from a
list (image bilinear, mask nearest), pad bottom/right to the crop (image with its mean, mask with 255),
random crop, random mirror.

Training is counted in iterations, as deeplab-pytorch's is: the data is an endless stream of reshuffled
passes over the list, item `pos` of the stream being image perm_p[pos % n] of pass p = pos // n, augmented
with a generator seeded by (seed, pos). So a batch is a function of (seed, step) only: the same with any
number of loader workers or processes, and a run resumed at a checkpoint goes on exactly.
"""
import os

import cv2
import numpy as np
import torch

from misc import imutils
from misc.pyutils import UserError, require_dir
from voc12.dataloader import IGNORE, VOC12ImageDataset, require_per_image


class PseudoMaskStream(VOC12ImageDataset):
    """Item `pos` of the training stream: {'name', 'img' float32 CHW, 'label' int64 HW (255 ignored)}."""

    def __init__(self, img_name_list_path, root, label_dir, crop_size=321,
                 scales=(0.5, 0.75, 1.0, 1.25, 1.5), flip=True, seed=0):
        super().__init__(img_name_list_path, root)
        require_dir(label_dir, "pseudo-mask folder",
                    "run make_sem_seg_labels first, or point --seg_label_dir at a folder of <id>.png masks")
        require_per_image(self.img_name_list, lambda n: os.path.join(label_dir, n + ".png"), "pseudo mask",
                          "run make_sem_seg_labels for that list, or fix --seg_label_dir / --seg_train_list",
                          listed_in=img_name_list_path)
        self.label_dir = label_dir
        self.crop_size = crop_size
        self.scales = tuple(scales)
        self.flip = flip
        self.seed = seed
        self.normalize = imutils.Normalize()
        self._perm = (None, None)

    def __len__(self):
        return len(self.img_name_list)

    def image_index(self, pos):
        n = len(self.img_name_list)
        p = pos // n
        if self._perm[0] != p:  # one permutation per pass, cached: consecutive items share it
            self._perm = (p, np.random.default_rng([int(self.seed), 0, p]).permutation(n))
        return int(self._perm[1][pos % n])

    def augment(self, img, label, rng):
        scale = self.scales[int(rng.integers(len(self.scales)))]
        h, w = label.shape
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
        img = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)  # on floats, as theirs
        label = imutils.pil_resize(label, (h, w), 0)
        img = self.normalize(img)  # the mean maps to 0: padding the normalised image with 0 pads with the mean
        c = self.crop_size
        ph, pw = max(c - h, 0), max(c - w, 0)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), constant_values=0)
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        top = int(rng.integers(img.shape[0] - c + 1))
        left = int(rng.integers(img.shape[1] - c + 1))
        img, label = img[top:top + c, left:left + c], label[top:top + c, left:left + c]
        if self.flip and rng.random() < 0.5:
            img, label = img[:, ::-1], label[:, ::-1]
        return img, label

    def __getitem__(self, pos):
        idx = self.image_index(pos)
        name = self.img_name_list[idx]
        img = self.load_img(idx)
        label = imutils.read_label_png(os.path.join(self.label_dir, name + ".png"), size=img.shape[:2],
                                       num_classes=len(self.data.class_names))
        img, label = self.augment(img, label, np.random.default_rng([int(self.seed), 1, int(pos)]))
        return {"name": name, "img": imutils.HWC_to_CHW(img),
                "label": np.ascontiguousarray(label).astype(np.int64)}


class StreamSampler(torch.utils.data.Sampler):
    """Stream positions of this process's share of the steps of one segment ("epoch" of misc.training.fit).

    Global step k holds positions k*B .. k*B + B - 1 (B the global batch); rank r takes its contiguous
    B/world of them. Segment e covers steps [e * steps_per_segment, (e + 1) * steps_per_segment) up to
    total_steps, so fit's per-epoch checkpoints land every steps_per_segment iterations."""

    def __init__(self, batch_size, steps_per_segment, total_steps, world=1, rank=0):
        if batch_size % world:
            raise UserError(f"a batch of {batch_size} images does not split over {world} processes; make "
                            f"--seg_batch_size a multiple of {world}")
        self.batch, self.per = batch_size, batch_size // world
        self.steps_per_segment, self.total = steps_per_segment, total_steps
        self.rank = rank
        self.segment = 0

    def set_epoch(self, epoch):
        self.segment = int(epoch)

    def steps(self):
        first = self.segment * self.steps_per_segment
        return range(first, min(first + self.steps_per_segment, self.total))

    def __iter__(self):
        for k in self.steps():
            start = k * self.batch + self.rank * self.per
            yield from range(start, start + self.per)

    def __len__(self):
        return len(self.steps()) * self.per
