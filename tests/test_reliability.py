"""Reliability: every bad input is one line on stderr and exit status 2 with nothing written lost; a killed
per-image step resumes to the outputs of an uninterrupted run; a resumed training ends with the weights of an
uninterrupted one; the same seed gives the same outputs twice."""
from conftest import devkit_flags
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

import run_sample
from misc import imutils, pyutils, training
from net import resnet50_cam, resnet50_irn
from voc12.dataloader import load_cls_labels, load_img_name_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = "2007_000000"  # first id of every list of the tiny devkit


def flags(devkit, work, *extra):
    return devkit_flags(devkit, work) + [
            "--backbone_weights", "none", "--from_scratch", "--cam_momentum", "0.9", "--cam_learning_rate", "0.01",
            "--cam_crop_size", "32", "--cam_resize_long", "32", "48", "--cam_batch_size", "2",
            "--cam_num_epoches", "1", "--cam_scales", "1.0", "0.5", "--irn_crop_size", "80",
            "--irn_batch_size", "10", "--irn_num_epoches", "1", "--irn_backbone_weights", "cam",
            "--num_workers", "0", "--device", "cpu", "--pool_source", "gt", "--exp_times", "2", *extra]


def only(*steps):
    """Flags that run just `steps`: stage I step names, 'pool' or 'cda_<step>' for stage II."""
    out = []
    for s in run_sample.STAGE1_STEPS:
        out += [f"--{s}_pass", str(s in steps), f"--cda_{s}_pass", str(f"cda_{s}" in steps)]
    return out + ["--make_instance_pool_pass", str("pool" in steps)]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: inputs this small gain nothing from two, and two spin-waiting threads slow down
    several times over on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def temp_files(root):
    return [p for p in root.rglob("*") if pyutils.TEMP_NAME.match(p.name)]


@pytest.fixture(scope="module")
def base(tiny_devkit, tmp_path_factory):
    """A devkit and a stage I work dir holding what each step reads, made without training: random CAM and
    IRN weights, CAM files of the right keys and shapes, IR labels and pseudo masks copied from the ground truth."""
    root = tmp_path_factory.mktemp("reliability_base")
    devkit, work = root / "dk", root / "work"
    shutil.copytree(tiny_devkit, devkit)
    (work / "sess").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(resnet50_cam.Net(20).state_dict(), work / "sess" / "res50_cam.pth")
    torch.save(resnet50_irn.Net().state_dict(), work / "sess" / "res50_irn.pth")
    for sub in ("ir_label", "sem_seg"):
        shutil.copytree(devkit / "SegmentationClass", work / "result" / sub)
    labels = load_cls_labels(str(devkit / "cls_labels.txt"))
    rng = np.random.default_rng(0)
    for name in load_img_name_list(str(devkit / "train_aug.txt")):
        h, w = imutils.image_size(str(devkit / "JPEGImages" / f"{name}.jpg"))
        keys = np.flatnonzero(labels[name]).astype(np.int64)
        pyutils.save_npz(str(work / "result" / "cam" / f"{name}.npz"), keys=keys,
                         cam=rng.random((len(keys), (h - 1) // 4 + 1, (w - 1) // 4 + 1), dtype=np.float32),
                         high_res=rng.random((len(keys), h, w), dtype=np.float32))
    return root


def copy_base(base, dst):
    """A writable copy made of hard links (the weights are 100 MB each). Every breaking edit below replaces a
    file (unlink first) and the steps write by rename, so the shared base is never changed."""
    shutil.copytree(base, dst, copy_function=os.link)
    return dst / "dk", dst / "work"


def fresh(path):
    path.unlink(missing_ok=True)
    return path


def replace_bytes(path, data):
    fresh(path).write_bytes(data)


def truncate(path):
    data = path.read_bytes()
    replace_bytes(path, data[:len(data) // 2])


def edit_label(path, fn):
    label = fn(imutils.read_label_png(str(path)).copy())
    imutils.save_label_png(str(fresh(path)), label)


def set_pixel(value):
    def fn(a):
        a[0, 0] = value
        return a
    return fn


def replace_cam(path, **arrays):
    d = pyutils.load_npz(str(path))
    d.update(arrays)
    pyutils.save_npz(str(fresh(path)), **d)


def put_checkpoint(path, state):
    torch.save(state, fresh(path))


def empty_pool(dk, work):
    pool = work / "instance_pool"
    pool.mkdir()
    pyutils.save_json(str(pool / "pool.json"), {"class_names": ["aeroplane"], "instances": {}, "source": "sem_seg",
                                                "mask_dir": "x", "min_ratio": 0.1, "max_ratio": 0.7, "num_masks": 5})


def nothing(dk, work):
    pass


J = f"JPEGImages/{FIRST}.jpg"
GT = f"SegmentationClass/{FIRST}.png"
IR = f"result/ir_label/{FIRST}.png"
SEM = f"result/sem_seg/{FIRST}.png"
CAM = f"result/cam/{FIRST}.npz"

# name: (break the copy, argv after the common flags, words the message must hold)
CASES = {
    "no_jpeg_folder": (lambda dk, w: shutil.rmtree(dk / "JPEGImages"), only("train_cam"), ["JPEGImages", "not found"]),
    "no_gt_folder": (lambda dk, w: shutil.rmtree(dk / "SegmentationClass"), only("eval_cam"),
                     ["ground-truth mask", "not found"]),
    "no_imagesets": (lambda dk, w: shutil.rmtree(dk / "ImageSets"), only("eval_cam"), ["image list not found"]),
    "empty_list": (lambda dk, w: replace_bytes(dk / "train_aug.txt", b"\n"), only("train_cam"),
                   ["image list is empty", "train_aug.txt"]),
    "id_without_image": (lambda dk, w: replace_bytes(dk / "train_aug.txt", (dk / "train_aug.txt").read_bytes()
                                                     + b"2099_000001\n"), only("train_cam"),
                         ["2099_000001", "not found"]),
    "corrupt_jpeg": (lambda dk, w: (replace_bytes(dk / J, b"not a jpeg" * 20), fresh(w / CAM)),
                     only("make_cam"), ["cannot read image", J]),
    "truncated_jpeg": (lambda dk, w: (truncate(dk / J), fresh(w / IR)), only("cam_to_ir_label"),
                       ["cannot read image", "truncated"]),
    # with a loader worker, whose re-raised error carries the worker's traceback in its message
    "truncated_ir_label": (lambda dk, w: truncate(w / IR), only("train_irn") + ["--num_workers", "1"],
                           ["cannot read label PNG", IR]),
    "truncated_pseudo_mask": (lambda dk, w: truncate(w / SEM), only("eval_sem_seg"), ["cannot read label PNG", SEM]),
    "truncated_gt": (lambda dk, w: truncate(dk / GT), only("eval_cam"), ["cannot read label PNG", GT]),
    "gt_values": (lambda dk, w: edit_label(dk / GT, set_pixel(77)), only("eval_cam"), ["holds value 77", GT]),
    "ir_label_values": (lambda dk, w: edit_label(w / IR, set_pixel(21)), only("train_irn"), ["holds value 21", IR]),
    "pseudo_mask_values": (lambda dk, w: edit_label(w / SEM, set_pixel(254)),
                           only("pool") + ["--pool_source", "sem_seg"], ["value 254", SEM]),
    "gt_size": (lambda dk, w: edit_label(dk / GT, lambda a: a[:40, :50]), only("eval_cam"),
                ["50x40", "64x48", GT]),
    "ir_label_size": (lambda dk, w: edit_label(w / IR, lambda a: a[:, :60]), only("train_irn"), ["60x48", IR]),
    "pseudo_mask_size": (lambda dk, w: edit_label(w / SEM, lambda a: a[:40]),
                         only("pool") + ["--pool_source", "sem_seg"], ["64x40", SEM]),
    "irn_weights_as_cam": (lambda dk, w: os.link(w / "sess/res50_irn.pth", fresh(w / "sess/res50_cam.pth")),
                           only("make_cam") + ["--force"], ["res50_cam.pth", "does not fit", "missing", "unexpected"]),
    "cam_weights_as_irn": (lambda dk, w: os.link(w / "sess/res50_cam.pth", fresh(w / "sess/res50_irn.pth")),
                           only("make_sem_seg") + ["--force"], ["res50_irn.pth", "does not fit", "missing"]),
    "truncated_weights": (lambda dk, w: truncate(w / "sess/res50_cam.pth"), only("make_cam") + ["--force"],
                          ["cannot read weights", "res50_cam.pth"]),
    "resume_other_network": (lambda dk, w: put_checkpoint(w / "sess/res50_cam.pth.ckpt", {
        "model": resnet50_irn.Net().state_dict(), "optimizer": {}, "global_step": 2, "epoch": 1}),
        only("train_cam") + ["--resume"], ["res50_cam.pth.ckpt", "does not fit", "missing", "unexpected"]),
    "resume_other_schedule": (lambda dk, w: put_checkpoint(w / "sess/res50_cam.pth.ckpt", {
        "model": state_of(w / "sess/res50_cam.pth"), "optimizer": {}, "global_step": 1, "max_step": 999, "epoch": 1}),
        only("train_cam") + ["--resume"], ["res50_cam.pth.ckpt", "999 steps", "delete it"]),
    "cam_other_size": (lambda dk, w: replace_cam(w / CAM, cam=np.zeros((1, 8, 10), np.float32),
                                                 high_res=np.zeros((1, 30, 40), np.float32)),
                       only("cam_to_ir_label") + ["--force"], [CAM, "does not fit", "40x30"]),
    "cam_other_classes": (lambda dk, w: replace_cam(w / CAM, keys=np.array([19])), only("make_sem_seg") + ["--force"],
                          [CAM, "classes [19]"]),
    "cam_not_a_cam_file": (lambda dk, w: replace_cam(w / CAM, cam=np.zeros((12, 16), np.float32)), only("eval_cam"),
                           [CAM, "not a CAM file"]),
    "truncated_cam": (lambda dk, w: truncate(w / CAM), only("cam_to_ir_label") + ["--force"], ["cannot read", CAM]),
    "empty_pool_built": (nothing, only("pool") + ["--pool_min_ratio", "0.99", "--pool_max_ratio", "1"],
                         ["instance pool is empty"]),
    "empty_pool_loaded": (empty_pool, only("cda_train_cam"), ["instance pool is empty"]),
    "unknown_class": (lambda dk, w: replace_bytes(dk / "cls_labels.txt", (dk / "cls_labels.txt").read_bytes()
                                                  .replace(b" boat", b" boot", 1)), only("train_cam"),
                      ["unknown class name 'boot'", "cls_labels.txt"]),
    "negative_threshold": (nothing, ["--conf_fg_thres", "-0.1"], ["--conf_fg_thres", "[0, 1]"]),
    "threshold_above_1": (nothing, ["--sem_seg_bg_thres", "1.5"], ["--sem_seg_bg_thres", "[0, 1]"]),
    "odd_cda_batch": (nothing, ["--cam_batch_size", "3"], ["--cam_batch_size", "even"]),
    "cda_batch_of_1": (nothing, ["--cam_batch_size", "1"], ["--cam_batch_size", "even"]),
    "zero_cam_epochs": (nothing, ["--cam_num_epoches", "0"], ["--cam_num_epoches", "at least 1"]),
    "zero_irn_epochs": (nothing, ["--irn_num_epoches", "0"], ["--irn_num_epoches", "at least 1"]),
    "negative_learning_rate": (nothing, ["--irn_learning_rate", "-0.1"], ["--irn_learning_rate", "positive"]),
    "irn_crop_too_small": (nothing, ["--irn_crop_size", "64"], ["--irn_crop_size", "at least 76"]),
    "negative_scale": (nothing, ["--cam_scales", "1.0", "-0.5"], ["--cam_scales", "positive"]),
    "not_a_number": (nothing, ["--cam_batch_size", "abc"], ["--cam_batch_size", "invalid int"]),
    "unknown_flag": (nothing, ["--cam_bach_size", "4"], ["unrecognized arguments", "--cam_bach_size"]),
}
if not torch.cuda.is_available():
    CASES["cuda_without_gpu"] = (nothing, ["--device", "cuda"], ["--device cuda", "no CUDA"])

PROGRESS = re.compile(r"\d+/\d+ \[|\?it/s|it/s\]|s/it\]")  # a tqdm bar


def stat_tree(root):
    """What identifies each file's content: a rewrite renames a new inode in, an in-place write changes mtime."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and p.name != "run.log":
            s = p.stat()
            out[p.relative_to(root)] = (s.st_ino, s.st_size, s.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, base, tmp_path, capsys):
    breaker, argv, words = CASES[case]
    devkit, work = copy_base(base, tmp_path / "copy")
    breaker(devkit, work)
    before = stat_tree(tmp_path / "copy")
    capsys.readouterr()
    assert run_sample.main(flags(devkit, work) + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [seg for seg in re.split(r"[\r\n]", err) if seg.strip() and not PROGRESS.search(seg)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    after = stat_tree(tmp_path / "copy")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was touched
    assert not temp_files(tmp_path / "copy")


KILLER = r"""
import os, sys, time
sys.path.insert(0, {root!r})
real = os.replace
count = [0]
def replace(src, dst):
    count[0] += str(dst).endswith(".png")  # the step's outputs (the driver's results.json is not one)
    if str(dst).endswith(".png") and count[0] == {nth}:  # this output's temporary file is complete but not renamed yet: kill us here
        open({marker!r}, "w").close()
        time.sleep(600)
    real(src, dst)
os.replace = replace
import run_sample
sys.exit(run_sample.main({argv!r}))
"""


def test_killed_step_resumes_to_same_outputs(base, tmp_path, capsys):
    """cam_to_ir_label killed with SIGKILL after three outputs (and in the middle of the fourth), rerun:
    it redoes only the rest and ends byte-identical to an uninterrupted run, without temporary files."""
    steps = only("cam_to_ir_label")
    ref_dk, ref_work = copy_base(base, tmp_path / "ref")
    shutil.rmtree(ref_work / "result" / "ir_label")
    assert run_sample.main(flags(ref_dk, ref_work) + steps) == 0

    devkit, work = copy_base(base, tmp_path / "killed")
    shutil.rmtree(work / "result" / "ir_label")
    marker = tmp_path / "fourth_write_started"
    script = KILLER.format(root=ROOT, nth=4, marker=str(marker), argv=flags(devkit, work) + steps)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the step ended before it could be killed"
            assert time.time() < deadline, "the step did not reach its fourth output"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    done = {p: p.stat() for p in (work / "result" / "ir_label").iterdir() if not pyutils.TEMP_NAME.match(p.name)}
    assert len(done) == 3
    assert len(temp_files(work)) == 1  # the half-done fourth output, under a temporary name only

    capsys.readouterr()
    assert run_sample.main(flags(devkit, work) + steps) == 0
    assert "removed 1 temporary files" in capsys.readouterr().out
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == (s.st_ino, s.st_mtime_ns) for p, s in done.items())
    ref = {p.name: p.read_bytes() for p in (ref_work / "result" / "ir_label").iterdir()}
    got = {p.name: p.read_bytes() for p in (work / "result" / "ir_label").iterdir()}
    assert got == ref
    assert not temp_files(tmp_path)

    # --force redoes every image (each output renamed in anew), to the same bytes
    inodes = {p.name: p.stat().st_ino for p in (work / "result" / "ir_label").iterdir()}
    assert run_sample.main(flags(devkit, work, "--force") + steps) == 0
    redone = {p.name: p.stat().st_ino for p in (work / "result" / "ir_label").iterdir()}
    assert redone.keys() == inodes.keys() and not any(redone[n] == inodes[n] for n in inodes)
    assert {p.name: p.read_bytes() for p in (work / "result" / "ir_label").iterdir()} == ref


class Interrupted(Exception):
    pass


def state_of(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_and_same_seed(tiny_devkit, tmp_path, monkeypatch):
    """train_cam for 2 epochs uninterrupted, and interrupted after epoch 1 then --resume: the same final
    weights. Both runs' epoch-1 checkpoints and their CAMs are equal too (same seed, same outputs)."""
    ids = load_img_name_list(str(tiny_devkit / "train_aug.txt"))[:4]
    (tmp_path / "train4.txt").write_text("".join(n + "\n" for n in ids))
    argv = ["--train_list", str(tmp_path / "train4.txt"), "--cam_num_epoches", "2", "--cam_scales", "1.0"]
    real_save = training.save_checkpoint
    epoch1 = {}

    def keep_epoch1(path, model, optimizer, epoch):
        real_save(path, model, optimizer, epoch)
        if epoch == 1:
            epoch1[path] = state_of(path)

    def stop_after_epoch1(path, model, optimizer, epoch):
        keep_epoch1(path, model, optimizer, epoch)
        if epoch == 1:
            raise Interrupted  # as if the machine went down right after the checkpoint

    work_a, work_b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setattr(training, "save_checkpoint", keep_epoch1)
    assert run_sample.main(flags(tiny_devkit, work_a, *argv) + only("train_cam", "make_cam")) == 0
    monkeypatch.setattr(training, "save_checkpoint", stop_after_epoch1)
    with pytest.raises(Interrupted):
        run_sample.main(flags(tiny_devkit, work_b, *argv) + only("train_cam", "make_cam"))
    assert not (work_b / "sess" / "res50_cam.pth").exists()
    epochs_run = []

    def count_epochs(path, model, optimizer, epoch):
        epochs_run.append(epoch)
        real_save(path, model, optimizer, epoch)

    monkeypatch.setattr(training, "save_checkpoint", count_epochs)
    assert run_sample.main(flags(tiny_devkit, work_b, *argv, "--resume") + only("train_cam", "make_cam")) == 0
    assert epochs_run == [2]  # it went on from the checkpoint, it did not start over

    ckpt_a, ckpt_b = (str(w / "sess" / "res50_cam.pth.ckpt") for w in (work_a, work_b))
    assert_same_state(epoch1[ckpt_a], epoch1[ckpt_b])
    weights_a = state_of(work_a / "sess" / "res50_cam.pth")
    assert_same_state(weights_a, state_of(work_b / "sess" / "res50_cam.pth"))
    assert not torch.equal(weights_a["classifier.weight"], epoch1[ckpt_a]["classifier.weight"])  # epoch 2 trained
    for name in ids:
        a = pyutils.load_npz(str(work_a / "result" / "cam" / f"{name}.npz"))
        b = pyutils.load_npz(str(work_b / "result" / "cam" / f"{name}.npz"))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # --resume once training is finished: nothing retrained, the weights and the CAMs made from them stay
    epochs_run.clear()
    before = stat_tree(work_b)
    assert run_sample.main(flags(tiny_devkit, work_b, *argv, "--resume") + only("train_cam", "make_cam")) == 0
    assert epochs_run == []
    after = stat_tree(work_b)
    assert all(after[k] == v for k, v in before.items() if k.parts[0] in ("sess", "result"))


def test_remove_temp_files_touches_only_temporaries(tmp_path):
    keep = [tmp_path / n for n in (".git/config", "notes.tmp", ".cache.tmp", "a.npz", "sub/.b.tmp.png", "x.tmp.npz")]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    (tmp_path / "sub").mkdir(exist_ok=True)
    # what a SIGKILL leaves: an atomic_path temporary beside its output, a half-built pool folder
    tempfile.mkstemp(prefix=".2007_000001.", suffix=".tmp.npz", dir=tmp_path / "sub")
    pool = tempfile.mkdtemp(prefix=".instance_pool.", suffix=".tmp", dir=tmp_path)
    open(os.path.join(pool, "pool.json"), "w").close()
    assert pyutils.remove_temp_files(tmp_path / "sub", recursive=False) == 1
    assert pyutils.remove_temp_files(tmp_path) == 1
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
