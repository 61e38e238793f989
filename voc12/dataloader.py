"""The data sets of every step, for any data set described as misc/datasets.py says (VOC 2012, COCO 2014): classification training, multi-scale inference,
segmentation / affinity training (IRNet's from IR label PNGs, AffinityNet's from la/ha CRF score maps)
and raw images for the CRF.

Lists and folders are always arguments; `root` is a misc.datasets.Data (or a VOC devkit folder). Items are plain numpy arrays (torch's default collate
turns them into tensors). Each item draws its randomness from rng_for(idx), a generator seeded by
(seed, epoch, idx), so the same item gets the same augmentation however many workers load it.
"""
import os

import numpy as np

from misc import imutils, pyutils
from misc.datasets import as_data
from misc.pyutils import UserError, require_dir, require_file
from voc12 import CAT_LIST

IGNORE = 255


def require_per_image(names, path_of, what, fix, listed_in=None):
    """UserError at the first id whose file path_of(id) is missing:
    '<what> of id <id> [(listed in <list>)] not found: <path>; <fix>'."""
    where = f" (listed in {listed_in})" if listed_in else ""
    for name in names:
        path = path_of(name)
        if not os.path.isfile(path):
            raise UserError(f"{what} of id {name}{where} not found: {path}; {fix}")


def load_img_name_list(path):
    """Image ids, one per line (extra columns, as in some VOC lists, are ignored). Given a list or tuple
    of list files, the union in order of first appearance, each id once."""
    if isinstance(path, (list, tuple)):
        return list(dict.fromkeys(n for p in path for n in load_img_name_list(p)))
    require_file(path, "image list", "pass a text file with one image id per line")
    with open(path) as f:
        # PSA's lists name paths (/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png): their id is the file stem
        names = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
    if not names:
        raise UserError(f"image list is empty: {path}; it needs one image id per line")
    return names


def load_cls_labels(path, cat_list=CAT_LIST):
    """{id: float32 (K,) multi-hot over cat_list} from lines `<id> <class name> <class name> ...`."""
    require_file(path, "class label file", "build it with: python -m voc12.make_cls_labels (VOC) or python -m "
                                           "coco14.prepare (COCO)")
    index = {name: i for i, name in enumerate(cat_list)}
    labels = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            vec = np.zeros(len(cat_list), np.float32)
            for name in parts[1:]:
                if name not in index:
                    shown = ", ".join(cat_list[:25]) + (", ..." if len(cat_list) > 25 else "")
                    raise UserError(f"{path} line {line_no}: unknown class name '{name}' for {parts[0]}; "
                                    f"use the data set's names ({shown}) or pick the right --dataset")
                vec[index[name]] = 1.0
            labels[parts[0]] = vec
    return labels


def get_img_path(name, root):
    return as_data(root).image_path(name)


def eval_ids(root, eval_set, eval_list=None):
    """Ids of the evaluation split: --eval_list if given, else the data set's list of <eval_set> (VOC:
    ImageSets/Segmentation/<eval_set>.txt of the devkit, as the reference's chainer_eval_set)."""
    if eval_list:
        return load_img_name_list(eval_list)
    return load_img_name_list(as_data(root).eval_list_path(eval_set))


def gt_mask(root, name):
    """The ground truth of `name`, checked against its image's size and the data set's labels (0..K, 255): a
    bad mask is named as such instead of passing for a wrong prediction."""
    data = as_data(root)
    path = data.gt_path(name)
    require_file(path, "ground-truth mask", "the data set needs SegmentationClass/ for evaluation")
    size = imutils.image_size(data.image_path(name))
    return imutils.read_label_png(path, size=size, num_classes=len(data.class_names))


class _Seeded:
    """Per-item generators from (seed, epoch, idx): independent of worker count and load order."""

    seed = 0
    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def rng_for(self, idx):
        return np.random.default_rng([int(self.seed), int(self.epoch), int(idx)])


class VOC12ImageDataset(_Seeded):
    """Raw images of a list: {'name', 'img' uint8 HWC RGB}. Checks every image exists up front,
    so a wrong root or list fails in a second instead of halfway through an epoch."""

    def __init__(self, img_name_list_path, root):
        self.data = as_data(root)
        self.data.description.check_root(self.data.root, self.data.label_root)
        self.img_name_list = load_img_name_list(img_name_list_path)
        require_per_image(self.img_name_list, self.data.image_path, "image",
                          "fix --data_root or remove the id from the list", listed_in=img_name_list_path)

    def __len__(self):
        return len(self.img_name_list)

    def load_img(self, idx):
        return imutils.read_image(self.data.image_path(self.img_name_list[idx]))

    def __getitem__(self, idx):
        return {"name": self.img_name_list[idx], "img": self.load_img(idx)}


class VOC12ClassificationDataset(VOC12ImageDataset):
    """Images with their 20-class multi-hot label, augmented as SPEC step 1: random long-side
    resize (bicubic), random flip, optional colour jitter (PSA, SEAM), normalise, crop padded with 0
    ('random' for training, 'top_left' (IRNet) or 'center' (PSA) for validation).

    color_jitter: None, or (brightness, contrast, saturation, hue) of torchvision's ColorJitter, applied
    after the flip and before normalising, as PSA's train_cls.py does."""

    def __init__(self, img_name_list_path, root, cls_labels_path, resize_long=None,
                 hor_flip=False, crop_size=None, crop_method=None, seed=0, color_jitter=None):
        super().__init__(img_name_list_path, root)
        if crop_method not in (None, "random", "top_left", "center"):
            raise ValueError(f"crop_method must be 'random', 'top_left' or 'center', got {crop_method!r}")
        if color_jitter is not None and len(color_jitter) != 4:
            raise ValueError(f"color_jitter must be (brightness, contrast, saturation, hue), got {color_jitter!r}")
        all_labels = load_cls_labels(cls_labels_path, self.data.cat_list)
        missing = [n for n in self.img_name_list if n not in all_labels]
        if missing:
            raise UserError(f"id {missing[0]} of {img_name_list_path} has no line in {cls_labels_path} "
                            f"({len(missing)} ids missing); rebuild it with python -m voc12.make_cls_labels")
        self.labels = [all_labels[n] for n in self.img_name_list]
        self.resize_long = resize_long
        self.hor_flip = hor_flip
        self.crop_size = crop_size
        self.crop_method = crop_method
        self.color_jitter = tuple(color_jitter) if color_jitter is not None else None
        self.seed = seed
        self.normalize = imutils.Normalize()

    def load_example(self, idx):
        return self.img_name_list[idx], self.load_img(idx), self.labels[idx]

    def transform(self, img, rng):
        """uint8 HWC -> float32 CHW. The draws depend only on the image size, so two images of
        the same size (an original and its pasted copy) given equal generators get equal boxes."""
        if self.resize_long:
            img = imutils.random_resize_long(img, self.resize_long[0], self.resize_long[1], rng)
        if self.hor_flip:
            img = imutils.random_lr_flip(img, rng)
        if self.color_jitter:
            img = imutils.color_jitter(img, rng, *self.color_jitter)
        img = self.normalize(img)
        if self.crop_size:
            if self.crop_method == "random":
                img = imutils.random_crop(img, self.crop_size, 0, rng)
            elif self.crop_method == "center":
                img = imutils.center_crop(img, self.crop_size, 0)
            else:  # IRNet semantics: anything but 'random' is the deterministic top-left crop
                img = imutils.top_left_crop(img, self.crop_size, 0)
        return imutils.HWC_to_CHW(img)

    def __getitem__(self, idx):
        name, img, label = self.load_example(idx)
        return {"name": name, "img": self.transform(img, self.rng_for(idx)), "label": label}


class VOC12ClassificationDatasetMSF(VOC12ClassificationDataset):
    """Multi-scale + flip inference input for make_cam: per scale a (2, 3, h, w) stack of the
    normalised image and its mirror; 'size' is the original (H, W)."""

    def __init__(self, img_name_list_path, root, cls_labels_path, scales=(1.0, 0.5, 1.5, 2.0)):
        super().__init__(img_name_list_path, root, cls_labels_path)
        self.scales = tuple(scales)

    def __getitem__(self, idx):
        name, img, label = self.load_example(idx)
        stacks = []
        for s in self.scales:
            x = img if s == 1.0 else imutils.pil_rescale(img, s, 3)
            x = imutils.HWC_to_CHW(self.normalize(x))
            stacks.append(np.stack([x, x[:, :, ::-1]], axis=0))
        return {"name": name, "img": stacks, "size": (img.shape[0], img.shape[1]), "label": label}


class VOC12SegmentationDataset(VOC12ImageDataset):
    """Image + label PNG from label_dir: rescale (image bicubic, label nearest), flip, normalise,
    crop (image padded with 0, label with 255 so padding is ignored by the loss)."""

    label_classes = None  # any uint8 label map; subclasses that need class indices say how many

    def __init__(self, img_name_list_path, label_dir, crop_size, root, rescale=None,
                 hor_flip=False, crop_method="random", seed=0):
        super().__init__(img_name_list_path, root)
        require_dir(label_dir, "label folder", "run the step that writes the label PNGs first")
        require_per_image(self.img_name_list, lambda n: os.path.join(label_dir, n + ".png"), "label PNG",
                          "run the step that writes it, or fix the label folder")
        self.label_dir = label_dir
        self.crop_size = crop_size
        self.rescale = rescale
        self.hor_flip = hor_flip
        self.crop_method = crop_method
        self.seed = seed
        self.normalize = imutils.Normalize()

    def __getitem__(self, idx):
        name = self.img_name_list[idx]
        rng = self.rng_for(idx)
        img = self.load_img(idx)
        label = imutils.read_label_png(os.path.join(self.label_dir, name + ".png"), size=img.shape[:2],
                                       num_classes=self.label_classes)
        if self.rescale:
            img, label = imutils.random_scale((img, label), self.rescale, (3, 0), rng)
        if self.hor_flip:
            img, label = imutils.random_lr_flip((img, label), rng)
        img = self.normalize(img)
        if self.crop_method == "random":
            img, label = imutils.random_crop((img, label), self.crop_size, (0, IGNORE), rng)
        else:
            img = imutils.top_left_crop(img, self.crop_size, 0)
            label = imutils.top_left_crop(label, self.crop_size, IGNORE)
        return {"name": name, "img": imutils.HWC_to_CHW(img), "label": np.ascontiguousarray(label)}


class VOC12AffinityDataset(VOC12SegmentationDataset):
    """Segmentation items plus inter-pixel affinity targets for IRN: the cropped label is shrunk
    x0.25 with nearest neighbour (PIL) to the feature stride, then paired by the path index."""

    @property
    def label_classes(self):
        # IR labels: background 0, classes 1..K, 255 unsure; any other value would pass for a class of its own
        return len(self.data.class_names)

    def __init__(self, img_name_list_path, label_dir, crop_size, root, indices_from, indices_to,
                 rescale=None, hor_flip=False, crop_method="random", seed=0):
        super().__init__(img_name_list_path, label_dir, crop_size, root, rescale=rescale,
                         hor_flip=hor_flip, crop_method=crop_method, seed=seed)
        self.indices_from = indices_from
        self.indices_to = indices_to

    def __getitem__(self, idx):
        from misc.indexing import affinity_labels  # imported late: indexing is a heavier module

        out = super().__getitem__(idx)
        small = imutils.pil_rescale(out["label"], 0.25, 0)
        bg_pos, fg_pos, neg = affinity_labels(small, self.indices_from, self.indices_to, self.label_classes)
        out["aff_bg_pos_label"], out["aff_fg_pos_label"], out["aff_neg_label"] = bg_pos, fg_pos, neg
        return out


def crf_path(crf_dir, name):
    return os.path.join(crf_dir, name + ".npz")


def load_crf(crf_dir, name, size=None, num_classes=None):
    """One la/ha CRF score file of cam_to_crf: (keys, crf) with keys int64 [0, classes + 1] (segmentation labels,
    at most num_classes when given) and crf float32 (1 + K, H, W), checked against the image `size` (H, W)."""
    path = crf_path(crf_dir, name)
    require_file(path, "CRF score file", "run the cam_to_crf step first")
    d = pyutils.load_npz(path, keys=("keys", "crf"))
    keys, crf = d["keys"], d["crf"]
    if not (keys.ndim == 1 and keys.dtype.kind in "iu" and keys.size >= 1 and keys[0] == 0
            and (keys >= 0).all() and (num_classes is None or (keys <= num_classes).all()) and crf.ndim == 3 and crf.shape[0] == keys.size):
        raise UserError(f"{path} is not a CRF score file of cam_to_crf (keys {keys.tolist()[:25]}, crf {crf.shape}); "
                        "delete it and rerun cam_to_crf")
    if size is not None and crf.shape[1:] != tuple(int(v) for v in size):
        raise UserError(f"{path} does not fit {name}, a {size[1]}x{size[0]} image: its maps are "
                        f"{crf.shape[2]}x{crf.shape[1]}; rerun cam_to_crf with --force")
    return keys.astype(np.int64), crf.astype(np.float32, copy=False)


class PSAAffinityDataset(VOC12ImageDataset):
    """AffinityNet's (PSA's) training samples from the la/ha CRF score maps (PSA's VOC12AffDataset with
    train_aff.py's transforms, SPEC_RESNET38 2.3):

    colour jitter of the uint8 image; one random crop of the image (padded with 0 in raw pixel values,
    i.e. black) and of the 2(1 + K) stacked la and ha score maps (padded with 0); normalise; one random
    flip of both; 8x8 block means of the scores; label = la's argmax where it is a class, 255 where la
    says background, 0 wherever ha says background, 255 in cells made only of padding; then bg/fg/neg
    pair labels on the crop_size/8 grid for PSA's pair set (pair_indices). Labels hold VOC class ids.
    Items: {'name', 'img' float32 (3, crop, crop), 'label' uint8 (crop/8, crop/8),
    'aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label' float32 (n_dirs, n_src)}.
    """

    stride = 8

    def __init__(self, img_name_list_path, la_crf_dir, ha_crf_dir, crop_size, root, radius=5,
                 color_jitter=(0.3, 0.3, 0.3, 0.1), hor_flip=True, seed=0):
        from misc.indexing import pair_indices  # imported late: indexing is a heavier module

        super().__init__(img_name_list_path, root)
        if crop_size % self.stride:
            raise ValueError(f"crop_size must be a multiple of {self.stride}, got {crop_size}")
        for crf_dir, what in ((la_crf_dir, "la"), (ha_crf_dir, "ha")):
            require_dir(crf_dir, f"{what} CRF folder", "run the cam_to_crf step first")
            require_per_image(self.img_name_list, lambda n, d=crf_dir: crf_path(d, n), what + " CRF scores",
                              "run the cam_to_crf step, or fix the folder")
        self.la_crf_dir, self.ha_crf_dir = la_crf_dir, ha_crf_dir
        self.crop_size = crop_size
        self.radius = radius
        self.color_jitter = tuple(color_jitter) if color_jitter else None
        self.hor_flip = hor_flip
        self.seed = seed
        self.normalize = imutils.Normalize()
        grid = crop_size // self.stride
        self.indices_from, self.indices_to = pair_indices(radius, (grid, grid))

    def load_example(self, idx):
        """(name, uint8 HWC image, keys [0, classes + 1], la and ha scores stacked: (2(1 + K), H, W))."""
        name = self.img_name_list[idx]
        img = self.load_img(idx)
        la_keys, la = load_crf(self.la_crf_dir, name, img.shape[:2], self.data.num_classes)
        ha_keys, ha = load_crf(self.ha_crf_dir, name, img.shape[:2], self.data.num_classes)
        if not np.array_equal(la_keys, ha_keys):
            raise UserError(f"{crf_path(self.la_crf_dir, name)} holds classes {la_keys.tolist()} but "
                            f"{crf_path(self.ha_crf_dir, name)} {ha_keys.tolist()}; rerun cam_to_crf with --force")
        return name, img, la_keys, np.concatenate([la, ha], axis=0)

    def transform(self, img, scores, rng):
        """(float32 (3, crop, crop) image, float32 (crop/8, crop/8, 2(1 + K)) block means of the scores)."""
        if self.color_jitter:
            img = imutils.color_jitter(img, rng, *self.color_jitter)
        img, scores = imutils.random_crop((img, np.transpose(scores, (1, 2, 0))), self.crop_size, (0, 0), rng)
        img = self.normalize(img)
        if self.hor_flip:
            img, scores = imutils.random_lr_flip((img, scores), rng)
        return imutils.HWC_to_CHW(img), imutils.block_mean(scores, self.stride)

    @staticmethod
    def label_from_scores(scores, keys):
        """PSA's la/ha rule on block-mean scores (h, w, 2(1 + K)) -> uint8 (h, w) VOC labels, 255 unsure."""
        no_score = np.max(scores, axis=-1) < 1e-5
        la, ha = (np.argmax(part, axis=-1) for part in np.array_split(scores, 2, axis=-1))
        label = np.asarray(keys)[la].astype(np.uint8)
        label[la == 0] = IGNORE
        label[ha == 0] = 0
        label[no_score] = IGNORE
        return label

    def __getitem__(self, idx):
        from misc.indexing import affinity_labels

        name, img, keys, scores = self.load_example(idx)
        img, scores = self.transform(img, scores, self.rng_for(idx))
        label = self.label_from_scores(scores, keys)
        bg_pos, fg_pos, neg = affinity_labels(label, self.indices_from, self.indices_to,
                                              len(self.data.class_names))
        return {"name": name, "img": img, "label": label,
                "aff_bg_pos_label": bg_pos, "aff_fg_pos_label": fg_pos, "aff_neg_label": neg}


def classification_sets(args, validation=True):
    """The classifier's training set (random long side in --cam_resize_long, flip, --cam_color_jitter, random
    --cam_crop_size crop) and its validation set (--cam_val_crop: IRNet's top-left crop, PSA's centre crop, or
    none, of --cam_val_crop_size), or None without validation (SEAM)."""
    jitter = tuple(args.cam_color_jitter) if args.cam_color_jitter is not None else None
    train_set = VOC12ClassificationDataset(args.train_list, args.data, args.cls_labels,
                                           resize_long=tuple(args.cam_resize_long), hor_flip=True,
                                           crop_size=args.cam_crop_size, crop_method="random", seed=args.seed,
                                           color_jitter=jitter)
    if not validation:
        return train_set, None
    crop = args.cam_val_crop
    val_set = VOC12ClassificationDataset(args.val_list, args.data, args.cls_labels,
                                         crop_size=None if crop == "none" else args.cam_val_crop_size,
                                         crop_method=None if crop == "none" else crop, seed=args.seed)
    return train_set, val_set


LABELLED_LISTS = ("train_list", "val_list", "infer_list", "pool_list")  # read with their image-level labels


def check_inputs(root, lists, cls_labels, eval_ids_=None):
    """Before the first step: every list file of `lists` ((flag, path) pairs) exists and names images of the
    devkit, the label file covers the lists read with labels, and the evaluated ids (and --seg_val_list) have
    their ground truth. A failure is one UserError naming the flag and the file. seg_test_list only needs to
    exist: a test list whose images are not in the devkit is skipped by eval_seg with a log line."""
    data = as_data(root)
    labels = load_cls_labels(cls_labels, data.cat_list) if any(flag in LABELLED_LISTS for flag, _ in lists) else {}
    for flag, path in lists:
        if not os.path.isfile(path):
            raise UserError(f"--{flag} {path} not found; pass a list file with one image id per line")
        names = load_img_name_list(path)
        if flag == "seg_test_list":
            continue
        require_per_image(names, data.image_path, "image", f"check --data_root and --{flag}",
                          listed_in=path)
        missing = [n for n in names if flag in LABELLED_LISTS and n not in labels]
        if missing:
            raise UserError(f"{cls_labels} has no image-level labels for {len(missing)} ids of --{flag} {path} (e.g. "
                            f"{missing[0]}); rebuild it (python -m voc12.make_cls_labels / coco14.prepare) or fix --cls_labels")
        if flag == "seg_val_list":
            require_per_image(names, data.gt_path,
                              "ground-truth mask", "eval_seg scores --seg_val_list against SegmentationClass/",
                              listed_in=path)
    if eval_ids_ is not None:
        require_per_image(eval_ids_, data.gt_path,
                          "ground-truth mask", "the eval steps need SegmentationClass/ (or pass --eval_list)")
