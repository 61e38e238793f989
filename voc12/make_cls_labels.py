"""Rebuild cls_labels.txt (`<id> <class name> ...` per line) from a devkit's Annotations XML.

Every <name> tag in an annotation counts; names that are not one of the 20 classes (person parts
such as 'head' or 'hand') are skipped, as in VOC's own image-level labels.

    python -m voc12.make_cls_labels --voc12_root VOCdevkit/VOC2012 \
        --lists voc12/train_aug.txt voc12/val.txt --out voc12/cls_labels.txt
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET

from tqdm import tqdm

from misc.pyutils import UserError, atomic_path, require_dir
from voc12 import CAT_LIST
from voc12.dataloader import load_img_name_list


def classes_from_xml(xml_path):
    """Class names present in one annotation, in CAT_LIST order."""
    if not os.path.isfile(xml_path):
        raise UserError(f"annotation not found: {xml_path}; check --voc12_root or drop the id from the list")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise UserError(f"cannot parse annotation {xml_path} ({e}); replace the file")
    found = {(el.text or "").strip() for el in root.iter("name")}
    return [c for c in CAT_LIST if c in found]


def build_cls_labels(voc12_root, list_paths):
    """{id: [class names]} over the union of the lists, in first-seen order."""
    require_dir(os.path.join(voc12_root, "Annotations"), "annotation folder",
                "--voc12_root must be a VOC devkit folder (VOCdevkit/VOC2012)")
    names = []
    for path in list_paths:
        names += load_img_name_list(path)
    names = list(dict.fromkeys(names))
    return {n: classes_from_xml(os.path.join(voc12_root, "Annotations", n + ".xml"))
            for n in tqdm(names, desc="annotations")}


def write_cls_labels(path, labels):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for name, classes in labels.items():
                f.write(" ".join([name] + classes) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description="Write cls_labels.txt from VOC annotation XML files.")
    p.add_argument("--voc12_root", required=True, help="devkit folder holding Annotations/")
    p.add_argument("--lists", nargs="+", required=True, help="image id lists whose labels to write")
    p.add_argument("--out", required=True, help="output cls_labels.txt")
    args = p.parse_args(argv)
    labels = build_cls_labels(args.voc12_root, args.lists)
    write_cls_labels(args.out, labels)
    print(f"wrote {len(labels)} image labels to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
