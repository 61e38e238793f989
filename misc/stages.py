"""Stage I and stage II as data: what differs between them, in one table that the driver loops over.

Stage II (CDA) runs the same step modules as stage I, with other output folders, the CDA paired training set
and make_instance_pool first. Every output that differs per stage is a row of OUTPUTS: the steps always read
the stage I flag's name (args.cam_out_dir, ...); stage_args gives it the stage's value. The stage II flags keep
the names of CDA's run_sample.py (--cam_aug_weights_name, ...) and appear nowhere else.
"""
import copy
import dataclasses

from misc.methods import SEG_STEPS, STEPS


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # key in results.json, and the switch --<name>
    label: str  # for logs and tables
    switch_prefix: str  # a step's switch is --<prefix><step>_pass
    first_steps: tuple  # run before the method's steps; switch --<step>_pass
    cda: bool  # the classifier trains on CDA pairs
    column: int  # of OUTPUTS: this stage's (flag, default)


STAGES = (
    Stage("stage1", "stage I", "", (), False, 0),
    Stage("stage2", "stage II", "cda_", ("make_instance_pool",), True, 1),
)
BY_NAME = {s.name: s for s in STAGES}

# Every output that differs per stage: (stage I flag, default), (stage II flag, default), help.
# Relative paths are under --work_dir. A method may override a default (misc/methods.OUTPUTS).
OUTPUTS = (
    (("cam_weights_name", "sess/res50_cam.pth"), ("cam_aug_weights_name", "sess/cam_aug.pth"),
     "classifier weights (train_cam / train_cls / train_seam)"),
    (("cam_out_dir", "result/cam"), ("cam_aug_out_dir", "result/cam_aug"), "CAM files, <id>.npz"),
    (("ir_label_out_dir", "result/ir_label"), ("ir_label_aug_out_dir", "result/ir_label_aug"),
     "irn: IR labels, <id>.png"),
    (("irn_weights_name", "sess/res50_irn.pth"), ("irn_aug_weights_name", "sess/irn_aug.pth"),
     "irn: inter-pixel relation network weights"),
    (("la_crf_dir", "result/crf_la"), ("la_crf_aug_dir", "result/crf_la_aug"), "psa, seam: la CRF score maps"),
    (("ha_crf_dir", "result/crf_ha"), ("ha_crf_aug_dir", "result/crf_ha_aug"), "psa, seam: ha CRF score maps"),
    (("aff_weights_name", "sess/res38_aff.pth"), ("aff_aug_weights_name", "sess/res38_aff_aug.pth"),
     "psa, seam: AffinityNet weights"),
    (("sem_seg_out_dir", "result/sem_seg"), ("sem_seg_aug_out_dir", "result/sem_seg_aug"), "pseudo masks, <id>.png"),
    (("seg_weights_name", "sess/deeplab.pth"), ("seg_aug_weights_name", "sess/deeplab_aug.pth"),
     "segmentation network weights"),
    (("seg_out_dir", "result/seg"), ("seg_aug_out_dir", "result/seg_aug"), "eval_seg's val predictions, <id>.png"),
    (("seg_test_out_dir", "seg_test"), ("seg_test_aug_out_dir", "seg_test_aug"),
     "eval_seg's test predictions in the evaluation server's layout, and results.tar"),
)
OUTPUT_NAMES = tuple(row[0][0] for row in OUTPUTS)  # the names the steps read
WEIGHTS = tuple(n for n in OUTPUT_NAMES if n.endswith("_weights_name"))  # files; the others are folders


def add_arguments(group):
    for *flags, help in OUTPUTS:
        for stage, (flag, default) in zip(STAGES, flags):
            group.add_argument(f"--{flag}", default=default, help=f"{stage.label}: {help}")


def output_defaults(outputs):
    """{stage I flag: per-stage defaults} (a method's own file names) -> parser defaults of every stage's flag."""
    flags = {row[0][0]: row[:len(STAGES)] for row in OUTPUTS}
    return {flag: default for name, defaults in outputs.items()
            for (flag, _), default in zip(flags[name], defaults)}


def output(args, stage, name):
    """The value of output `name` (a stage I flag name) in `stage` of the resolved args."""
    row = next(r for r in OUTPUTS if r[0][0] == name)
    return getattr(args, row[stage.column][0])


def all_outputs(args):
    """Every per-stage output path of the resolved args, with its flag name."""
    return [(row[s.column][0], getattr(args, row[s.column][0])) for row in OUTPUTS for s in STAGES]


def switch(stage, step):
    """The args attribute that turns `step` on or off in `stage`."""
    return f"{step}_pass" if step in stage.first_steps else f"{stage.switch_prefix}{step}_pass"


def ran(args):
    """The stages this run runs, in order."""
    return [s for s in STAGES if getattr(args, s.name)]


def seg_on(args, stage):
    """Whether the segmentation steps run after `stage` (--seg_stages, the stage and step switches)."""
    stages = ran(args)
    if stage not in stages or (args.seg_stages == "last" and stage != stages[-1]):
        return False
    return any(getattr(args, switch(stage, s)) for s in SEG_STEPS)


def steps(args, stage):
    """The steps `stage` runs, in order, with the switches that are on."""
    order = stage.first_steps + STEPS[args.method] + (SEG_STEPS if seg_on(args, stage) else ())
    return [s for s in order if getattr(args, switch(stage, s))]


def trains(args, step):
    """The stages in which `step` trains (its switch on, the stage on, the step one of the method's)."""
    return [s for s in ran(args) if step in steps(args, s)]


def stage_args(args, stage):
    """The namespace one stage's steps read: the same flags, with the stage's outputs under the stage I names."""
    a = copy.copy(args)
    a.stage, a.cda = stage.name, stage.cda
    for name in OUTPUT_NAMES:
        setattr(a, name, output(args, stage, name))
    a.pool_mask_dir = args.sem_seg_out_dir  # stage I's masks feed the instance pool
    a.sem_seg_lists = [args.infer_list]
    if stage is STAGES[0] and args.stage2 and args.make_instance_pool_pass and args.pool_source == "sem_seg":
        a.sem_seg_lists.append(args.pool_list)  # one pass of the walk, each image once
    if "train_seg" in steps(args, stage) and not args.seg_label_dir:
        a.sem_seg_lists.append(args.seg_train_list)  # the segmentation network trains on this stage's masks
    for flag in ("irn_backbone_weights", "aff_backbone_weights"):  # 'cam': the stage's classifier
        if getattr(args, flag) == "cam":
            setattr(a, flag, a.cam_weights_name)
    return a
