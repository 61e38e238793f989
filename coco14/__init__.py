"""MS COCO 2014, described for every step (misc/datasets.py): the 80 object classes in the order every label
vector uses (index 0..79), where the images are, and where coco14.prepare puts the ground truth it derives
from the instance annotations.

A segmentation label is the class index + 1 (COCO's category ids 1..90 have gaps; they are mapped to 1..80 in
sorted-id order); 0 is background. Images keep COCO's own names: the id of an image in every list is its file
stem, COCO_<split>_<12-digit image id>, which names its split folder too.

    <data_root>/train2014/, val2014/, annotations/instances_{train,val}2014.json   (the download)
    <label_root>/SegmentationClass/<id>.png, cls_labels.txt, train14.txt, val14.txt   (python -m coco14.prepare)
"""
import os
import re

from misc.pyutils import UserError, require_dir

NAME = "coco14"
TITLE = "MS COCO 2014"

# (category id, official name, supercategory) of the 80 categories of instances_{train,val}2014.json
CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)
CAT_IDS = [cat_id for cat_id, _, _ in CATEGORIES]
assert CAT_IDS == sorted(CAT_IDS) and len(set(CAT_IDS)) == len(CAT_IDS)
# one token per class (the label files split on spaces): "traffic light" -> "traffic_light"
CAT_LIST = [name.replace(" ", "_") for _, name, _ in CATEGORIES]
N_CAT = len(CAT_LIST)
CAT_NAME_TO_IDX = {name: i for i, name in enumerate(CAT_LIST)}
CAT_ID_TO_IDX = {cat_id: i for i, cat_id in enumerate(CAT_IDS)}  # COCO category id -> label-vector index
CLASS_NAMES = ["background"] + CAT_LIST  # the segmentation labels 0..N_CAT
SPLITS = ("train2014", "val2014")
ROOT_HINT = ("point --data_root at the COCO 2014 folder that holds train2014/, val2014/ and "
             "annotations/instances_{train,val}2014.json")



def palette():
    """(256, 3) uint8 colours of the labels 0..255 in PNG masks and pictures: VOC's colour map, which gives the
    81 labels distinct colours (COCO has no colour convention of its own; ReCAM's masks are greyscale PNGs)."""
    from misc.imutils import voc_palette
    return voc_palette()


_STEM = re.compile(r"COCO_(" + "|".join(SPLITS) + r")_(\d{12})")


def parse_stem(stem):
    """(split, image id) of a file stem COCO_<split>_<12 digits>; UserError for anything else."""
    m = _STEM.fullmatch(str(stem))
    if m is None:
        raise UserError(f"image id {stem!r} is not a COCO 2014 file stem (COCO_train2014_<12 digits> or "
                        "COCO_val2014_<12 digits>); use the lists that python -m coco14.prepare writes")
    return m.group(1), int(m.group(2))


def image_path(coco_root, stem):
    split, _ = parse_stem(stem)
    return os.path.join(coco_root, split, stem + ".jpg")


def gt_path(label_root, stem):
    return os.path.join(label_root, "SegmentationClass", stem + ".png")


def eval_list_path(label_root, eval_set):
    """The list of a split written by coco14.prepare: 'train' -> train14.txt, 'val' -> val14.txt."""
    return os.path.join(label_root, eval_set + "14.txt")


def test_list_path(label_root):
    """COCO's test images have no public annotations: no test list."""
    return None


def default_label_root(root):
    return os.path.join(root, "cda_labels")


def check_root(root, label_root):
    """Cheap up-front checks (UserError, one line): the image root, and the annotations unless the labels are
    already prepared."""
    from coco14 import prepare as prepare_module
    require_dir(root, "COCO 2014 folder (--data_root)", ROOT_HINT)
    if label_root and not prepare_module.needed(root, label_root):
        return
    prepare_module.check_root(root)


def prepare_data(data, num_workers, log):
    """Masks, labels and lists from the annotations into data.label_root, unless they are there already."""
    from coco14 import prepare as prepare_module
    if prepare_module.needed(data.root, data.label_root):
        prepare_module.prepare(data.root, data.label_root, num_workers=num_workers or None, log=log)


# The lists coco14.prepare writes under the label root. ReCAM (the reference for COCO) trains the classifier on
# train2014, validates it on val2014 and evaluates CAMs and pseudo masks on train2014.
DEFAULTS = dict(train_list="{labels}/train14.txt", val_list="{labels}/val14.txt",
                infer_list="{labels}/train14.txt", cls_labels="{labels}/cls_labels.txt", chainer_eval_set="train")
# Published COCO settings for IRNet's pipeline: ReCAM's run_sample_coco.py (a31c920), conf_fg_thres 0.35 and
# conf_bg_thres 0.1; every other flag there equals IRNet's VOC defaults (its cam_eval_thres 0.15 and
# sem_seg_bg_thres 0.25 are IRNet's values; ReCAM's VOC script has 0.21 and 0.28). 0.35 / 0.1 are ReCAM's own IR
# label thresholds, chosen for its ReCAM maps (its VOC script has them too since a31c920; IRNet's are 0.30 / 0.05);
# here they apply to plain IRNet CAMs. PSA, SEAM and the segmentation network have no published COCO 2014
# settings in their reference code: they run their VOC settings (README says so).
METHOD_DEFAULTS = {"irn": dict(conf_fg_thres=0.35, conf_bg_thres=0.1)}
SOURCES = ("ReCAM (zhaozhengChen/ReCAM): run_sample_coco.py (the IR label thresholds), mscoco/annToMask.py "
           "(masks), mscoco/dataloader.py (labels), step_coco/eval_cam.py and eval_sem_seg.py (train2014 evaluated)")
