"""`run_sample.py --demo`: the whole method on the toy devkit, sized for a 2-core laptop CPU.

There are no ImageNet weights here, so the backbone starts from random numbers. The faithful settings
(BatchNorm frozen at its initial statistics, stages 1-2 untrained, lr 0.1) barely learn from scratch, so
the demo trains every stage with BatchNorm in training mode and SGD with momentum, on a handful of classes.
That is a demo mode, never a default for real runs.
"""
import os

TOY_ROOT = "data/toy_voc"
TOY = dict(num_images=300, size=(128, 96), seed=0, context_bias=0.9, num_heldout=100,
           classes=["aeroplane", "boat", "car", "cow", "train", "tvmonitor"])

DEFAULTS = dict(
    work_dir="work_demo", backbone_weights="none", from_scratch=True, irn_backbone_weights="cam",
    cam_crop_size=96, cam_resize_long=(80.0, 128.0), cam_batch_size=16, cam_num_epoches=5,
    cam_learning_rate=0.01, cam_momentum=0.9, cam_scales=(1.0, 0.5, 1.5),
    irn_crop_size=96, irn_batch_size=16, irn_num_epoches=3, irn_learning_rate=0.05, irn_momentum=0.9,
    num_workers=2,
    # the segmentation network: DeepLab-v3+ on a ResNet-50 from scratch (BatchNorm in training mode), 100 steps
    # of 8 crops of 64 px, one input scale in the loss
    seg_arch="deeplabv3plus", seg_backbone_depth=50, seg_backbone_weights="none", seg_crop_size=64,
    seg_batch_size=8, seg_num_iters=100, seg_checkpoint_every=25, seg_learning_rate=0.01, seg_msc_scales=(),
)

# AffinityNet on ResNet-38: the full network costs about 1 s per 96x96 image and training step on this CPU, so
# the demo narrows it to an eighth of the channels (--resnet38_width, a demo size that takes no pretrained
# weights) and uses a smaller toy devkit (fewer, smaller images; still at least the 65x33 px that AffinityNet's
# radius-5 pairs need).
PSA_TOY_ROOT = "data/toy_voc_psa"
PSA_TOY = dict(TOY, num_images=160, size=(96, 72), num_heldout=40)
METHOD_DEFAULTS = {
    "irn": {},
    "psa": dict(
        work_dir="work_demo_psa", resnet38_width=0.125, cam_crop_size=64, cam_resize_long=(64.0, 96.0),
        cam_val_crop="center", cam_val_crop_size=72, cam_batch_size=16, cam_num_epoches=6, cam_learning_rate=0.01,
        cam_weight_decay=1e-4, cam_scales=(1.0, 0.5, 1.5), aff_crop_size=72, aff_batch_size=16, aff_num_epoches=4,
        aff_learning_rate=0.01, aff_weight_decay=1e-4, aff_momentum=0.9, aff_backbone_weights="cam"),
}
# SEAM: the same narrow network and toy devkit as psa; batch 8 (4 pairs in stage II); AffinityNet's crop
# of 88 keeps an 11x11 map, where SEAM's small-map rule leaves the radius at 5
METHOD_DEFAULTS["seam"] = dict(
    METHOD_DEFAULTS["psa"], work_dir="work_demo_seam", cam_batch_size=8, cam_num_epoches=5, cam_val_crop="none",
    cam_scales=(0.5, 1.0, 1.5), aff_crop_size=88)
TOYS = {"irn": (TOY_ROOT, TOY), "psa": (PSA_TOY_ROOT, PSA_TOY), "seam": (PSA_TOY_ROOT, PSA_TOY)}


# COCO's toy: the same pictures in COCO's layout (coco14/synth.py), a handful of COCO's 80 classes
# (256 images, not 300: every train2014 image is scored, not VOC's train half, and the whole demo stays under
# 10 minutes on a 2-core CPU; COCO has no test list, so no held-out images)
COCO_TOY = dict(TOY, num_images=256, num_heldout=0)
COCO_PSA_TOY = dict(PSA_TOY, num_heldout=0)
COCO_TOYS = {"irn": ("data/toy_coco", COCO_TOY), "psa": ("data/toy_coco_psa", COCO_PSA_TOY),
             "seam": ("data/toy_coco_psa", COCO_PSA_TOY)}


# psa on the COCO toy: the multi-label loss averages over all 80 classes, so at VOC's lr each class learns at a
# quarter of the rate it does among 20; at 0.01 the stage I masks were all background and the pool empty, at 0.04
# (4x) the demo runs through (irn and seam run through at their VOC demo settings)
DATASET_METHOD_DEFAULTS = {"coco14": {"psa": dict(cam_learning_rate=0.04)}}


def defaults(method, dataset="voc12"):
    """The demo's flag defaults for a method (and data set: the COCO demo writes its own work folder)."""
    d = dict(DEFAULTS, **METHOD_DEFAULTS.get(method, {}))
    d.update(DATASET_METHOD_DEFAULTS.get(dataset, {}).get(method, {}))
    if dataset != "voc12":
        d["work_dir"] = d["work_dir"].replace("work_demo", f"work_demo_{dataset}")
    return d


BANNER = ("DEMO: toy devkit, randomly initialised {net} trained from scratch with BatchNorm in training mode "
          "(no ImageNet weights). Numbers are not comparable with the paper's results, and on this toy "
          "stage II is not expected to beat stage I on the train list (README, Results).")
NETS = {"irn": "ResNet-50", "psa": "ResNet-38 of an eighth of the width", "seam": "ResNet-38 of an eighth of the width"}


def banner(method):
    return BANNER.format(net=NETS[method])


def point_at_toy(args):
    """Point --data_root (unless given) and, for VOC, the list flags at the method's toy devkit. Returns the keyword
    arguments of the data set's synth.write_devkit when the devkit is still to be written, else None."""
    root, toy = (TOYS if args.dataset == "voc12" else COCO_TOYS)[args.method]
    if args.data_root is None:
        args.data_root = root
    if args.dataset == "voc12":
        # the toy's held-out images play VOC's test set: eval_seg writes the evaluation server's layout for them
        for flag, name in (("train_list", "train_aug.txt"), ("val_list", "val.txt"), ("infer_list", "train.txt"),
                           ("cls_labels", "cls_labels.txt"), ("seg_train_list", "train_aug.txt"),
                           ("seg_val_list", "val.txt"), ("seg_test_list", "heldout.txt")):
            value = getattr(args, flag)
            if value is None or value.startswith("voc12/"):  # the VOC lists do not fit the toy devkit
                setattr(args, flag, os.path.join(args.data_root, name))
        images = os.path.join(args.data_root, "JPEGImages")
    else:
        images = os.path.join(args.data_root, "annotations")
    # synth.json is written last: without it our toy devkit is a half-written one (an interrupted first run)
    # and is written again. Another folder given with --demo only needs its images.
    done = (os.path.isfile(os.path.join(args.data_root, "synth.json")) if args.data_root == root
            else os.path.isdir(images))
    return None if done else toy
