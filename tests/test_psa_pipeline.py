"""--method psa and --method seam end to end on a tiny devkit: AffinityNet (PSA) and SEAM on a narrow ResNet-38,
stage I and stage II."""
from conftest import devkit_flags, write_tiny_devkit
import json

import numpy as np
import pytest

import run_sample
from misc import config, pyutils
from misc.imutils import read_image, read_label_png
from voc12.dataloader import load_cls_labels, load_img_name_list


WEIGHTS = {"psa": ("res38_cls", "res38_aff"), "seam": ("resnet38_SEAM", "resnet38_aff")}


@pytest.fixture(scope="module", params=["psa", "seam"])
def psa_run(request, tmp_path_factory):
    # 80x48: AffinityNet's radius-5 pairs need at least 65x33 px (the default tiny devkit is 64x48)
    method = request.param
    devkit = write_tiny_devkit(tmp_path_factory.mktemp(f"{method}_voc"), size=(80, 48))
    work = tmp_path_factory.mktemp(f"{method}_work")
    flags = devkit_flags(devkit, work) + [
        "--method", method, "--resnet38_width", "0.125", "--backbone_weights", "none", "--from_scratch",
        "--cam_momentum", "0.9", "--cam_learning_rate", "0.01", "--cam_crop_size", "48", "--cam_resize_long", "48",
        "64", "--cam_batch_size", "4", "--cam_num_epoches", "1", "--cam_scales", "1.0", "0.5",
        "--cam_val_crop_size", "48", "--aff_crop_size", "72" if method == "psa" else "88", "--aff_batch_size", "4", "--aff_num_epoches", "1",
        "--aff_momentum", "0.9", "--aff_backbone_weights", "cam", "--num_workers", "0", "--device", "cpu",
        "--exp_times", "4", "--pool_source", "gt"]
    assert run_sample.main(flags) == 0
    return method, devkit, work


def test_psa_outputs(psa_run):
    method, devkit, work = psa_run
    labels = load_cls_labels(str(devkit / "cls_labels.txt"))
    train = load_img_name_list(str(devkit / "train_aug.txt"))
    for suffix in ("", "_aug"):
        for name in train:
            h, w = read_image(str(devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
            keys = np.nonzero(labels[name])[0]
            cam = pyutils.load_npz(str(work / "result" / f"cam{suffix}" / f"{name}.npz"))
            assert np.array_equal(cam["keys"], keys) and "cam" not in cam  # PSA's CAMs: image size only
            assert cam["high_res"].shape == (len(keys), h, w) and cam["high_res"].dtype == np.float32
            assert cam["high_res"].max(initial=0) <= 1
            if method == "psa":
                assert cam["high_res"].min() >= 0
            else:  # SEAM's min-max rule: per class the minimum pixels go negative (-(min + 1e-5) / range, which
                # can pass -1) and the maximum is ~1; a map 0 everywhere becomes -1 everywhere, as an absent class
                for m in cam["high_res"]:
                    assert (m.max() > 0.99 and m.min() < 0) or (m == -1).all()
            for crf in ("crf_la", "crf_ha"):
                d = pyutils.load_npz(str(work / "result" / f"{crf}{suffix}" / f"{name}.npz"))
                assert np.array_equal(d["keys"], np.concatenate([[0], keys + 1]))
                assert d["crf"].shape == (1 + len(keys), h, w)
                assert np.allclose(d["crf"].sum(0), 1, atol=1e-4)  # CRF marginals
            # stage I masks the pool list (train_aug) too when the pool comes from its masks; here gt, so
            # only the inference list
        for name in load_img_name_list(str(devkit / "train.txt")):
            mask = read_label_png(str(work / "result" / f"sem_seg{suffix}" / f"{name}.png"))
            assert mask.shape == read_image(str(devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
            assert set(np.unique(mask)) <= {0, *(np.nonzero(labels[name])[0] + 1)}
    cls, aff = WEIGHTS[method]
    for weights in (cls, aff, cls + "_aug", aff + "_aug"):
        assert (work / "sess" / f"{weights}.pth").stat().st_size > 0


def test_psa_results_and_schedule(psa_run):
    method, devkit, work = psa_run
    train, title, paper = {"psa": ("train_cls", "AffinityNet (PSA), ResNet-38", "48.9 / 63.3"),
                           "seam": ("train_seam", "SEAM, ResNet-38", "58.4 / 66.4")}[method]
    results = json.loads((work / "results.json").read_text())
    for stage in ("stage1", "stage2"):
        for metric in ("cam", "sem_seg"):
            assert 0 <= results[stage][metric]["miou"] <= 1
        assert results[stage]["cam"]["threshold"] == {"psa": 0.2, "seam": 0.26}[method]
        curve = results[stage]["cam"].get("curve")
        assert (curve is not None) == (method == "seam")  # SEAM's threshold sweep
        if curve:
            assert len(curve["miou"]) == 60 and curve["best_miou"] == max(curve["miou"])
            assert curve["miou"][26] == pytest.approx(results[stage]["cam"]["miou"])
    log = (work / "run.log").read_text()
    assert f"stage II: {train}" in results["seconds"] and "stage II: infer_aff" in results["seconds"]
    stage2 = log[log.index(f"=== stage II: {train} ==="):]
    assert "5 steps, poly max_step 2 (--cda_max_step reference)" in stage2  # 10 images, batch 4 in pairs
    assert title in log and paper in log  # the table names the method and its paper numbers
    assert title in (work / "report.html").read_text()


def test_method_defaults_apply_before_parsing_and_flags_win(tmp_path):
    a = config.parse(["--method", "psa", "--cam_num_epoches", "2"])
    assert (a.cam_crop_size, a.cam_batch_size, a.cam_learning_rate, a.cam_weight_decay) == (448, 16, 0.1, 5e-4)
    assert (a.cam_eval_thres, a.beta, a.alpha, a.exp_times, a.high_alpha) == (0.2, 8, 16, 8, 32)
    assert a.cam_num_epoches == 2 and a.cam_val_crop == "center" and a.cam_val_crop_size == 500
    assert (a.cam_weights_name, a.cam_aug_weights_name) == ("sess/res38_cls.pth", "sess/res38_cls_aug.pth")
    assert config.parse(["--demo", "--method=psa"]).resnet38_width == 0.125  # the psa demo's defaults
    assert config.parse(["--demo"]).cam_crop_size == 96 and config.parse([]).cam_crop_size == 512


@pytest.mark.parametrize("argv", [["--meth", "psa"], ["--dem"], ["--method", "psa", "--cam_num", "2"]])
def test_abbreviated_flags_are_refused(argv, tmp_path, capsys):
    """argparse would take --meth for --method, after the method's defaults were chosen from argv: refused."""
    assert run_sample.main(argv + ["--work_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: ") and [a for a in argv if a.startswith("--")][-1] in err
    assert err.count("\n") == 1


def test_psa_too_small_images_are_a_user_error(tmp_path):
    from step.infer_aff import check_size
    check_size("a", (33, 65), 5)
    for size in ((32, 80), (48, 64)):
        with pytest.raises(pyutils.UserError, match="too small for AffinityNet"):
            check_size("a", size, 5)
