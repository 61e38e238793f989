"""The first-round methods of the CDA table: their step lists, flag defaults and paper numbers.

`run_sample.py --method NAME` runs STEPS[NAME] as stage I, then make_instance_pool and the same steps with
CDA pairs as stage II (misc/stages.py). DEFAULTS[NAME] and OUTPUTS[NAME] (the method's file names in each
stage) are applied to the parser before parsing (misc/config.py), so explicit flags still win.
A step that differs per method is its own module; nothing else in the code asks which method runs.
"""

STEPS = {
    "irn": ("train_cam", "make_cam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg", "eval_sem_seg"),
    "psa": ("train_cls", "infer_cls", "eval_cam", "cam_to_crf", "train_aff", "infer_aff", "eval_sem_seg"),
    "seam": ("train_seam", "infer_seam", "eval_cam", "cam_to_crf", "train_aff", "infer_aff", "eval_sem_seg"),
}
SEG_STEPS = ("train_seg", "eval_seg")  # the last step: a segmentation network on the stage's pseudo masks
METHODS = tuple(STEPS)
ALL_STEPS = tuple(dict.fromkeys([s for steps in STEPS.values() for s in steps] + list(SEG_STEPS)))
STEP_MODULES = {"make_sem_seg": "make_sem_seg_labels"}  # driver step name -> step/<module>.py
TRAIN_CLASSIFIER = {"irn": "train_cam", "psa": "train_cls", "seam": "train_seam"}  # the step that trains on CDA pairs in stage II
TITLES = {"irn": "IRNet, ResNet-50", "psa": "AffinityNet (PSA), ResNet-38", "seam": "SEAM, ResNet-38"}

# Settings of the reference code (SPEC_RESNET38 5.4, with the reference's file:line there)
DEFAULTS = {
    "irn": {},
    "psa": dict(
        backbone_weights="imagenet", cam_crop_size=448, cam_resize_long=(256.0, 512.0),
        cam_color_jitter=(0.3, 0.3, 0.3, 0.1), cam_batch_size=16, cam_num_epoches=15, cam_learning_rate=0.1,
        cam_weight_decay=5e-4, cam_val_crop="center", cam_val_crop_size=500, cam_scales=(1.0, 0.5, 1.5, 2.0),
        cam_eval_thres=0.2, low_alpha=4, high_alpha=32, alpha=16, beta=8, exp_times=8),
    "seam": dict(
        backbone_weights="imagenet", cam_crop_size=448, cam_resize_long=(448.0, 768.0),
        cam_color_jitter=(0.3, 0.3, 0.3, 0.1), cam_batch_size=8, cam_num_epoches=8, cam_learning_rate=0.01,
        cam_weight_decay=5e-4, cam_val_crop="none", cam_scales=(0.5, 1.0, 1.5, 2.0), cam_eval_thres=0.26,
        cam_eval_curve=True, low_alpha=4, high_alpha=24, aff_learning_rate=0.01, aff_seam_radius=True,
        alpha=6, beta=8, exp_times=6),
}
# The method's file names, per stage (stage I, stage II), keyed by the stage I flag (misc/stages.OUTPUTS)
OUTPUTS = {
    "irn": {},
    "psa": {"cam_weights_name": ("sess/res38_cls.pth", "sess/res38_cls_aug.pth")},
    "seam": {"cam_weights_name": ("sess/resnet38_SEAM.pth", "sess/resnet38_SEAM_aug.pth"),
             "aff_weights_name": ("sess/resnet38_aff.pth", "sess/resnet38_aff_aug.pth")},
}

# VOC 2012 train mIoU % (CDA README; PSA's 59.7 and SEAM's 55.4 / 63.6 are the CDA paper's baselines)
VOC_PAPER = {
    "irn": {"stage1": {"cam": 48.3, "sem_seg": 66.5}, "stage2": {"cam": 50.8, "sem_seg": 67.7}},
    "psa": {"stage1": {"cam": 48.0, "sem_seg": 59.7}, "stage2": {"cam": 48.9, "sem_seg": 63.3}},
    "seam": {"stage1": {"cam": 55.4, "sem_seg": 63.6}, "stage2": {"cam": 58.4, "sem_seg": 66.4}},
}
# The numbers each table shows next to ours, per data set: {dataset: {method: {stage: {metric: value}}}}.
# COCO: result listings give CDA's segmentation network 33.2 mIoU on COCO 2014 val; that figure could not be
# checked against the paper's text, so it is shown as a listing, and for no stage I row.
PAPER = {"voc12": VOC_PAPER,
         "coco14": {m: {"stage1": {}, "stage2": {"seg": 33.2}} for m in METHODS}}
PAPER_NOTE = {"voc12": "paper, VOC train: CAM / mask",
              "coco14": "listed, not checked against the paper: CDA's segmentation network, COCO val"}


def reference(method, dataset, stage, metric):
    """The published (or listed) number for a table cell, or None."""
    return PAPER.get(dataset, {}).get(method, {}).get(stage, {}).get(metric)
