"""PASCAL VOC 2012: the 20 object classes in the order every label vector uses (index 0..19).

A segmentation label is the class index + 1; 0 is background and 255 marks ignored pixels.
"""
CAT_LIST = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]
N_CAT = len(CAT_LIST)
CAT_NAME_TO_IDX = {name: i for i, name in enumerate(CAT_LIST)}
CLASS_NAMES = ["background"] + CAT_LIST  # the segmentation labels 0..20
