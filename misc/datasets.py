"""Data sets are data: a data set is a package (voc12/, coco14/) whose __init__ describes it, and every step
reads the class list, the paths and the palette from that description instead of knowing VOC.

A description module has:
- NAME, TITLE; CAT_LIST (the object classes in label-vector order) and CLASS_NAMES (["background"] + CAT_LIST,
  the segmentation labels 0..K);
- image_path(root, id) and gt_path(label_root, id); palette(): (256, 3) uint8 colours of the labels;
- eval_list_path(label_root, eval_set): the list of an evaluation split;
- DEFAULTS: flag defaults of the data set (its lists, relative to the label root when they start with "{labels}/");
  METHOD_DEFAULTS: {method: flag defaults} where the field published settings for the pair; SOURCES: where they
  come from.

misc/ never imports a data-set package by name (misc is the library below them): describe() looks it up.
"""
import importlib
from dataclasses import dataclass

NAMES = ("voc12", "coco14")


def describe(name):
    """The description module of data set `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; one of {', '.join(NAMES)}")
    return importlib.import_module(name)


@dataclass(frozen=True)
class Data:
    """A data set on disk: its description's name, the image root and the folder that holds the ground truth
    (VOC: both the devkit; COCO: the images' root and coco14.prepare's output). Plain strings, so it pickles
    into data-loader workers and process pools."""

    name: str
    root: str
    label_root: str

    @property
    def description(self):
        return describe(self.name)

    @property
    def palette(self):
        """(256, 3) uint8: the colours of the labels in written masks and report pictures."""
        return self.description.palette()

    @property
    def cat_list(self):
        return self.description.CAT_LIST

    @property
    def class_names(self):
        return self.description.CLASS_NAMES

    @property
    def num_classes(self):
        """Object classes (label vector length); the segmentation labels are 0..num_classes."""
        return len(self.cat_list)

    def image_path(self, image_id):
        return self.description.image_path(self.root, image_id)

    def gt_path(self, image_id):
        return self.description.gt_path(self.label_root, image_id)

    def eval_list_path(self, eval_set):
        return self.description.eval_list_path(self.label_root, eval_set)


def as_data(root):
    """A Data from a Data or from a VOC devkit folder (the form the VOC-only code and its tests pass)."""
    if isinstance(root, Data):
        return root
    return Data("voc12", str(root), str(root))
