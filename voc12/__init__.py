"""PASCAL VOC 2012, described for every step (misc/datasets.py): the 20 object classes in the order every
label vector uses (index 0..19), where the images and the ground truth are, and the flag defaults.

A segmentation label is the class index + 1; 0 is background and 255 marks ignored pixels.
"""
import os

NAME = "voc12"
TITLE = "PASCAL VOC 2012"
CAT_LIST = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]
N_CAT = len(CAT_LIST)
CAT_NAME_TO_IDX = {name: i for i, name in enumerate(CAT_LIST)}
CLASS_NAMES = ["background"] + CAT_LIST  # the segmentation labels 0..N_CAT


def palette():
    """(256, 3) uint8 colours of the labels 0..255 in PNG masks and pictures: VOC's colour map."""
    from misc.imutils import voc_palette
    return voc_palette()


ROOT_HINT = "point --data_root (or --voc12_root) at VOCdevkit/VOC2012, the folder that holds JPEGImages/"


def default_label_root(root):
    return root  # the devkit holds its own ground truth


def check_root(root, label_root):
    """Cheap up-front check of the folders (UserError, one line)."""
    from misc.pyutils import require_dir
    require_dir(os.path.join(root, "JPEGImages"), "JPEGImages folder of --data_root", ROOT_HINT)


def prepare_data(data, num_workers, log):
    """Nothing to prepare: VOC ships its ground truth and the lists and labels are in this folder."""


def image_path(root, image_id):
    return os.path.join(root, "JPEGImages", image_id + ".jpg")


def gt_path(label_root, image_id):
    return os.path.join(label_root, "SegmentationClass", image_id + ".png")


def eval_list_path(label_root, eval_set):
    """IRNet's chainer_eval_set: a split of the devkit's ImageSets/Segmentation."""
    return os.path.join(label_root, "ImageSets", "Segmentation", eval_set + ".txt")


def test_list_path(label_root):
    """VOC 2012 test (a separate download): eval_seg writes the evaluation server's layout for it."""
    return os.path.join(label_root, "ImageSets", "Segmentation", "test.txt")


# The standard lists of IRNet's repository (train_aug = SBD + VOC train), kept in this folder
DEFAULTS = dict(train_list="voc12/train_aug.txt", val_list="voc12/val.txt", infer_list="voc12/train.txt",
                cls_labels="voc12/cls_labels.txt", chainer_eval_set="train")
METHOD_DEFAULTS = {}  # every method's reference settings are VOC's (misc/methods.DEFAULTS)
