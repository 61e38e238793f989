"""The configuration (misc/config.py) and the stage table (misc/stages.py): flags resolved once, defaults that
follow other flags, every check in one place, and the shape the driver promises (no step imports a step)."""
import ast
import glob
import os

import numpy as np
import pytest

import run_sample
from conftest import SEG_TINY
from misc import config, pyutils, stages
from misc.imutils import read_label_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def own_lists(devkit, work):
    """Only what a devkit with its own lists needs: no --seg_* list flag."""
    d = str(devkit)
    return ["--voc12_root", d, "--train_list", f"{d}/train_aug.txt", "--val_list", f"{d}/val.txt",
            "--infer_list", f"{d}/train.txt", "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(work)]


def test_segmentation_lists_follow_the_training_lists(tiny_devkit, tmp_path):
    args = config.resolve(own_lists(tiny_devkit, tmp_path))
    assert (args.seg_train_list, args.seg_val_list, args.pool_list) == (args.train_list, args.val_list,
                                                                         args.train_list)
    assert args.seg_test_list == "" and "no test-set predictions" in args.config_notes[0]
    # explicit flags win; a devkit that holds VOC's test list gets it
    args = config.resolve(own_lists(tiny_devkit, tmp_path) + ["--seg_val_list", args.infer_list])
    assert args.seg_val_list == args.infer_list
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000001\n")
    args = config.resolve(["--voc12_root", str(root), "--work_dir", str(tmp_path)])
    assert args.seg_test_list == str(root / "ImageSets" / "Segmentation" / "test.txt") and not args.config_notes


def test_a_devkit_with_its_own_lists_runs_to_the_segmentation_network(tiny_devkit, tmp_path):
    """Stage I and the segmentation network with only --train_list/--val_list/--infer_list/--cls_labels."""
    flags = own_lists(tiny_devkit, tmp_path) + [
        "--backbone_weights", "none", "--from_scratch", "--cam_momentum", "0.9", "--cam_learning_rate", "0.01",
        "--cam_crop_size", "64", "--cam_resize_long", "48", "80", "--cam_batch_size", "4", "--cam_num_epoches", "1",
        "--cam_scales", "1.0", "--irn_crop_size", "96", "--irn_batch_size", "4", "--irn_num_epoches", "1",
        "--irn_backbone_weights", "cam", "--num_workers", "0", "--device", "cpu", "--exp_times", "2",
        "--stage2", "False"] + SEG_TINY
    assert run_sample.main(flags) == 0
    results = pyutils.load_json(str(tmp_path / "results.json"))
    assert 0 <= results["stage1"]["seg"]["miou"] <= 1
    for name in open(tiny_devkit / "train_aug.txt").read().split():  # seg_train_list = train_list: all masked
        assert read_label_png(str(tmp_path / "result" / "sem_seg" / f"{name}.png")).dtype == np.uint8
    assert "no test-set predictions" in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--cam_batch_size", "3"], "must be even and at least 2"),
    (["--cam_batch_size", "3", "--stage2", "False"], None),  # stage I alone takes an odd batch
    (["--cam_batch_size", "0", "--stage2", "False"], "--cam_batch_size must be at least 1"),
    (["--cam_batch_size", "3", "--cda_train_cam_pass", "False"], None),
    (["--method", "psa", "--cam_batch_size", "5"], "must be even and at least 2"),
    (["--irn_crop_size", "90"], "multiple of 4"),
    (["--cam_eval_thres", "1.5"], "within [0, 1]"),
    (["--crf_batch", "0"], "--crf_batch must be at least 1"),
])
def test_each_rule_once(tiny_devkit, tmp_path, argv, message):
    flags = own_lists(tiny_devkit, tmp_path) + argv
    if message is None:
        config.resolve(flags)
    else:
        with pytest.raises(pyutils.UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            config.resolve(flags)


def test_crf_backend_auto_is_pydensecrf_on_cpu(tiny_devkit, tmp_path):
    assert config.resolve(own_lists(tiny_devkit, tmp_path)).crf_backend == "pydensecrf"
    assert config.resolve(own_lists(tiny_devkit, tmp_path) + ["--crf_backend", "torch"]).crf_backend == "torch"


def test_stage_table_gives_each_stage_its_outputs(tiny_devkit, tmp_path):
    args = config.resolve(own_lists(tiny_devkit, tmp_path) + ["--method", "seam"])
    one, two = (stages.stage_args(args, s) for s in stages.STAGES)
    for name in stages.OUTPUT_NAMES:
        assert getattr(one, name) != getattr(two, name)
        assert os.path.dirname(getattr(two, name)).startswith(str(tmp_path))
    assert two.cam_weights_name.endswith("resnet38_SEAM_aug.pth") and two.aff_weights_name.endswith("resnet38_aff_aug.pth")
    assert (one.cda, two.cda) == (False, True) and two.pool_mask_dir == one.sem_seg_out_dir
    assert stages.steps(args, stages.STAGES[1])[0] == "make_instance_pool"
    assert "make_instance_pool" not in stages.steps(args, stages.STAGES[0])


# ---------------------------------------------------------------- the shape of the code

def python_files(*folders):
    return [f for d in folders for f in sorted(glob.glob(os.path.join(ROOT, d, "*.py")))]


def test_no_step_imports_a_step():
    for path in python_files("step", "misc", "net", "voc12", "cda"):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "step" or n.startswith("step.") for n in names), (path, names)


def test_misc_does_not_import_voc12():
    for path in python_files("misc"):
        tree = ast.parse(open(path).read())
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any(m and m.split(".")[0] == "voc12" for m in mods), path


def test_stage_two_output_names_appear_once():
    names = [row[1][0] for row in stages.OUTPUTS]
    assert len(names) == 11
    for path in python_files("", "misc", "step", "net", "voc12", "cda"):
        if os.path.basename(path) == "stages.py":
            continue
        text = open(path).read()
        assert not [n for n in names if n in text], path


def test_driver_is_short():
    path = os.path.join(ROOT, "run_sample.py")
    text = open(path).read()
    assert len(text.splitlines()) < 200
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 60, node.name


# ---------------------------------------------------------------- inputs checked before the first step

def _labels_without(devkit, tmp_path, name):
    path = tmp_path / "labels.txt"
    path.write_text("".join(line for line in open(devkit / "cls_labels.txt") if not line.startswith(name)))
    return str(path)


@pytest.mark.parametrize("case", ["seg_test_list", "pool_labels", "work_dir", "backbone_weights", "cam_weights",
                                  "backbone_keys", "cam_weights_keys"])
def test_inputs_are_checked_before_the_first_step(case, tiny_devkit, tmp_path, capsys):
    """Each of these used to stop the run only when the step that reads it came (minutes in, on VOC)."""
    import time

    import torch
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")  # the weights of another network
    pool = tmp_path / "pool.txt"
    pool.write_text(open(tiny_devkit / "heldout.txt").read())  # images of the devkit outside --train_list
    first = pool.read_text().split()[0]
    (tmp_path / "a_file").write_text("")
    argv, words = {
        "seg_test_list": (["--seg_test_list", str(tmp_path / "absent.txt"), "--eval_seg_pass", "True"],
                          ["--seg_test_list", "absent.txt", "not found"]),
        "pool_labels": (["--pool_list", str(pool), "--cls_labels", _labels_without(tiny_devkit, tmp_path, first)],
                        ["no image-level labels", "--pool_list", first]),
        "work_dir": (["--work_dir", str(tmp_path / "a_file" / "work")], ["cannot write into", "a_file"]),
        "backbone_weights": (["--backbone_weights", str(tmp_path / "nope.pth")], ["--backbone_weights", "nope.pth"]),
        "cam_weights": (["--train_cam_pass", "False"], ["stage I make_cam: weights", "res50_cam.pth"]),
        "backbone_keys": (["--backbone_weights", str(tmp_path / "linear.pth")],
                          ["--backbone_weights (read by train_cam): backbone weights", "linear.pth",
                           "265 missing, 2 unexpected keys", "pass a ResNet-50 state dict"]),
        "cam_weights_keys": (["--train_cam_pass", "False", "--cam_weights_name", str(tmp_path / "linear.pth")],
                             ["stage I make_cam: weights (read by make_cam): weights", "linear.pth does not fit CAM",
                              "797 missing, 2 unexpected keys", "or train it in this run"]),
    }[case]
    start = time.time()
    assert run_sample.main(own_lists(tiny_devkit, tmp_path / "w") + ["--device", "cpu"] + argv) == 2
    assert time.time() - start < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "w" / "sess").exists()  # nothing ran


# ---------------------------------------------------------------- the keys of the weights files


def _meta_file(path, make):
    """The state dict of make() built on the meta device: the keys and shapes of a real file, no bytes."""
    import torch
    with torch.device("meta"):
        torch.save(make().state_dict(), path)
    return str(path)


def test_weights_keys_are_checked_as_each_step_loads(tmp_path):
    """Every step's check passes the files its loader takes (a whole checkpoint as a backbone, torchvision's fc, a
    ResNet-38 network's head) and refuses another network's or another width's, in one line, without allocating a
    network."""
    import time
    import types

    import torchvision
    from misc import datasets
    from net import deeplab, resnet38_aff, resnet38_cls, resnet38_SEAM, resnet50_cam, resnet50_irn, weights
    args = types.SimpleNamespace(data=datasets.Data("voc12", "", ""), resnet38_width=0.125, from_scratch=False,
                                 seg_arch="deeplabv2", seg_backbone_depth=50, irn_crop_size=512, aff_radius=5,
                                 aff_seam_radius=False)
    f = {name: _meta_file(tmp_path / f"{name}.pth", make) for name, make in {
        "torchvision": torchvision.models.resnet50, "cam": lambda: resnet50_cam.Net(20), "irn": resnet50_irn.Net,
        "cls": lambda: resnet38_cls.Net(20, width=0.125), "seam": lambda: resnet38_SEAM.Net(20, width=0.125),
        "aff": lambda: resnet38_aff.Net(width=0.125), "seg": lambda: deeplab.build(21, "deeplabv2", 50),
        "cls_wide": lambda: resnet38_cls.Net(20, width=0.25)}.items()}
    fits = {"train_cam": ["torchvision", "cam", "irn"], "train_irn": ["torchvision", "cam", "irn"],
            "train_cls": ["cls", "seam", "aff"], "train_seam": ["cls", "seam", "aff"],
            "train_aff": ["cls", "seam", "aff"],
            "train_seg": ["torchvision", "cam"], "make_cam": ["cam"], "infer_cls": ["cls"], "infer_seam": ["seam"],
            "make_sem_seg": ["irn"], "infer_aff": ["aff"], "eval_seg": ["seg"]}
    assert sorted(fits) == sorted(weights.LOADERS)
    start = time.time()
    for step, names in fits.items():
        for name in names:
            weights.check(args, step, f[name], "--flag")
        for name in sorted(set(f) - set(names) - {"torchvision"})[:3]:
            with pytest.raises(pyutils.UserError) as e:
                weights.check(args, step, f[name], "--flag")
            msg = str(e.value)
            assert "\n" not in msg and msg.startswith(f"--flag (read by {step}): ") and f[name] in msg, msg
            assert "does not fit" in msg and "; pass " in msg, msg
    assert time.time() - start < 10


def test_weights_keys_of_mxnet_params(tmp_path):
    """A .params given for ResNet-38 goes through the MXNet reader and its renaming: one that lacks tensors fails."""
    import types

    import numpy as np
    from misc import datasets
    from net import weights
    from test_resnet38 import write_mxnet
    path = str(tmp_path / "short.params")
    write_mxnet(path, {"arg:conv1a_weight": np.zeros((64, 3, 3, 3), np.float32)})
    args = types.SimpleNamespace(data=datasets.Data("voc12", "", ""), resnet38_width=1.0)
    with pytest.raises(pyutils.UserError, match=r"^--backbone_weights \(read by train_cls\): .*short.params is not the "
                                                r"ResNet-38 ImageNet model \(190 of the 191 backbone tensors missing"):
        weights.check(args, "train_cls", path, "--backbone_weights")


def test_only_the_weights_a_step_reads_are_listed(tiny_devkit, tmp_path):
    """A backbone flag is checked for the steps that start from it (psa has no train_irn: --irn_backbone_weights,
    which follows --backbone_weights, is not a ResNet-50 there); 'cam' is the stage's classifier when it is not
    trained in this run."""
    weights = str(tmp_path / "res38.pth")
    args = config.resolve(own_lists(tiny_devkit, tmp_path / "w") + ["--method", "psa", "--backbone_weights", weights,
                                                                   "--stage2", "False"])
    _, files, _ = config.inputs(args)
    assert files == [("--backbone_weights", weights, "train_cls"), ("--aff_backbone_weights", weights, "train_aff")]
    args = config.resolve(own_lists(tiny_devkit, tmp_path / "w") + [
        "--irn_backbone_weights", "cam", "--train_cam_pass", "False", "--make_cam_pass", "False", "--stage2", "False"])
    _, files, _ = config.inputs(args)
    assert [(what, step) for what, _, step in files] == [("stage I train_irn: --irn_backbone_weights cam", "train_irn")]
    assert files[0][1] == args.cam_weights_name
