"""Data sets as data: nothing outside a data set's description knows how many classes there are."""
import io
import os
import tokenize

import pytest

from misc import config, datasets, pyutils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("step", "misc", "net", "cda", "voc12", "coco14")
# the descriptions themselves, and the toy generators (their numbers are pixel colours and sizes)
EXEMPT = {"voc12/__init__.py", "coco14/__init__.py", "voc12/synth.py", "coco14/synth.py"}
COUNTS = {"20", "21", "80", "81"}
# lines where one of those numbers is not a class count
NOT_COUNTS = {
    ("step/train_seg.py", '{"params": head_b, "lr": 20 * lr, "weight_decay": 0.0}]'),  # deeplab-pytorch's lr x20
    ("misc/imutils.py", "return _crf_terms(3 / scale_factor, 3, 80 / scale_factor, 13, 10)"),  # PSA's CRF sxy 80
    ("misc/pyutils.py", 'for unit, size in (("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):'),
    ("misc/pyutils.py", "NEARLY_FULL = 2 ** 20"),
    ("net/resnet38d.py", "mults = (1, 2, 10, 20)"),  # PSA's learning-rate multipliers
    ("misc/demo.py", "cam_crop_size=96, cam_resize_long=(80.0, 128.0), cam_batch_size=16, cam_num_epoches=5,"),
}


def source_files():
    yield "run_sample.py"
    for pkg in PACKAGES:
        folder = os.path.join(ROOT, pkg)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".py"):
                    yield f"{pkg}/{name}"


def class_count_literals(path):
    with open(os.path.join(ROOT, path)) as f:
        src = f.read()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NUMBER and tok.string.split(".")[0] in COUNTS:
            yield tok.start[0], tok.line.strip()


def test_no_class_count_outside_the_descriptions():
    found = [f"{path}:{line_no}: {line}" for path in source_files() if path not in EXEMPT
             for line_no, line in class_count_literals(path) if (path, line) not in NOT_COUNTS]
    assert not found, "class counts outside a data set's description:\n" + "\n".join(found)


def test_the_grep_sees_a_count(tmp_path, monkeypatch):
    """The scan itself: a literal 21 in code is found, one in a comment or a string is not."""
    (tmp_path / "x.py").write_text("a = 21  # 80 classes\nb = '81'\nc = 2.0 * 20\n")
    monkeypatch.setattr("test_datasets.ROOT", str(tmp_path))
    assert [n for n, _ in class_count_literals("x.py")] == [1, 3]


def test_voc_description_and_plain_folders():
    data = datasets.as_data("/d")
    assert data == datasets.Data("voc12", "/d", "/d") and datasets.as_data(data) is data
    assert data.image_path("2007_000032") == "/d/JPEGImages/2007_000032.jpg"
    assert data.gt_path("2007_000032") == "/d/SegmentationClass/2007_000032.png"
    assert data.eval_list_path("train") == "/d/ImageSets/Segmentation/train.txt"
    assert data.num_classes == 20 and data.class_names[0] == "background" and len(data.class_names) == 21
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.describe("imagenet")


def test_data_root_and_irnets_name_for_it(tiny_devkit, tmp_path):
    d = str(tiny_devkit)
    lists = ["--train_list", f"{d}/train_aug.txt", "--val_list", f"{d}/val.txt", "--infer_list", f"{d}/train.txt",
             "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(tmp_path)]
    a = config.resolve(["--voc12_root", d] + lists)
    b = config.resolve(["--data_root", d] + lists)
    assert a.data == b.data == datasets.Data("voc12", d, d)
    assert a.dataset == "voc12" and a.train_list == f"{d}/train_aug.txt"


def test_voc_defaults_are_irnets_lists(tiny_devkit, tmp_path):
    args = config.parse(["--data_root", str(tiny_devkit)])
    assert (args.train_list, args.val_list, args.infer_list, args.cls_labels, args.chainer_eval_set) == (
        "voc12/train_aug.txt", "voc12/val.txt", "voc12/train.txt", "voc12/cls_labels.txt", "train")


def test_unknown_dataset_is_one_line(tmp_path):
    with pytest.raises(pyutils.UserError, match="argument --dataset: invalid choice: 'coco'"):
        config.resolve(["--dataset", "coco", "--data_root", str(tmp_path)])


def test_settings_per_data_set_and_explicit_flags_win(tmp_path):
    root = ["--data_root", str(tmp_path), "--work_dir", str(tmp_path / "w")]
    voc = config.parse(root)
    coco = config.parse(["--dataset", "coco14"] + root)
    assert (voc.conf_fg_thres, voc.conf_bg_thres) == (0.30, 0.05)  # IRNet
    assert (coco.conf_fg_thres, coco.conf_bg_thres) == (0.35, 0.1)  # ReCAM's run_sample_coco.py
    assert coco.cam_eval_thres == voc.cam_eval_thres and coco.sem_seg_bg_thres == voc.sem_seg_bg_thres
    assert config.parse(["--dataset", "coco14", "--conf_fg_thres", "0.4"] + root).conf_fg_thres == 0.4
    assert config.parse(["--dataset", "coco14", "--method", "psa"] + root).conf_fg_thres == voc.conf_fg_thres
    # the demo: psa's classifier lr is 4x on the 80-class toy, VOC's demo and the other methods unchanged
    demo = {(d, m): config.parse(["--dataset", d, "--method", m, "--demo"]).cam_learning_rate
            for d in ("voc12", "coco14") for m in ("irn", "psa", "seam")}
    assert demo[("coco14", "psa")] == 4 * demo[("voc12", "psa")] == 0.04
    assert all(demo[("coco14", m)] == demo[("voc12", m)] for m in ("irn", "seam"))
    assert config.parse(["--dataset", "coco14", "--method", "psa", "--demo", "--cam_learning_rate", "0.02"]
                        ).cam_learning_rate == 0.02


def test_palette_is_part_of_the_description(tmp_path):
    import numpy as np
    from PIL import Image

    from misc import imutils
    for name in datasets.NAMES:
        data = datasets.Data(name, "/r", "/l")
        pal = data.palette
        assert pal.shape == (256, 3) and pal.dtype == np.uint8
        assert len({tuple(c) for c in pal[:len(data.class_names)]}) == len(data.class_names)  # distinct colours
    # the writers and the report's pictures use the palette they are given
    pal = imutils.voc_palette()[::-1].copy()
    label = np.array([[0, 1], [80, 255]], np.uint8)
    imutils.save_label_png(str(tmp_path / "m.png"), label, pal)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and bytes(im.getpalette()[:768]) == pal.tobytes()
    np.testing.assert_array_equal(imutils.read_label_png(str(tmp_path / "m.png")), label)
    np.testing.assert_array_equal(imutils.colorize(label, pal), pal[label])
