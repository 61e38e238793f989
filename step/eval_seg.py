"""Step 9: the segmentation network's predictions on `val` (scored: mIoU and per-class IoU into results.json
as results[stage]['seg']) and on `test` (written in the evaluation server's layout, and a tar of it).

Inference as deeplab-pytorch's (main.py test and crf, libs/models/msc.py, libs/utils/crf.py, configs/voc12.yaml):
the whole image at scales 1, 0.5 and 0.75, logits fused by pixel-wise max at the scale-1 logit size,
upsampled bilinearly to the image, softmax, then a dense CRF of 10 iterations with a Gaussian kernel
(sxy 1, weight 3) and a bilateral one (sxy 67, srgb 3, weight 4), argmax. deeplab-pytorch does not mirror
the image; --seg_infer_flip True adds the mirror to the max. The bilateral kernel sees what deeplab-pytorch's
main.py gives it (--seg_crf_image reference): the data set's BGR image minus the mean, cast to uint8, so
values below the mean wrap around (-1.7 -> 255); its demo.py, and --seg_crf_image raw, give the image itself.

Reads from args: seg_arch, seg_backbone_depth, seg_weights_name, seg_val_list, seg_test_list, seg_infer_scales,
seg_infer_flip, seg_crf, seg_crf_image, seg_out_dir, seg_test_out_dir (defaults in step.train_seg.add_arguments);
voc12_root, device, amp, num_workers, force, results_path, stage.
Writes <seg_out_dir>/<id>.png, <seg_test_out_dir>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png and
<seg_test_out_dir>/results.tar (palette PNGs; per-image outputs are skipped when newer than the weights).
"""
import collections
import multiprocessing
import os
import tarfile

import numpy as np
import torch
from tqdm import tqdm

from misc import dist, imutils, metrics, perimage, pyutils, torchutils, training
from net import deeplab
from voc12.dataloader import get_img_path, gt_mask, load_img_name_list

# deeplab-pytorch configs/voc12.yaml, CRF section
CRF = dict(iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3)
SUBMISSION = os.path.join("results", "VOC2012", "Segmentation", "comp6_test_cls")
MEAN_BGR = np.array([104.008, 116.669, 122.675], np.float32)  # configs/voc12.yaml IMAGE.MEAN


def crf_image(img, mode="reference"):
    """The uint8 (H, W, 3) image the CRF's bilateral kernel sees, from the RGB uint8 image.

    'reference': deeplab-pytorch main.py's `image.astype(np.uint8)` of its data set's image, BGR minus
    MEAN_BGR (float32). NumPy's cast of a negative float to uint8 is left to the platform (x86: truncation
    toward zero, then modulo 256); written out here so that it is the same everywhere. 'raw': the image."""
    if mode == "raw":
        return np.ascontiguousarray(img, dtype=np.uint8)
    if mode != "reference":
        raise ValueError(f"mode must be 'reference' or 'raw', got {mode!r}")
    centred = np.asarray(img, np.float32)[..., ::-1] - MEAN_BGR
    return np.ascontiguousarray(np.mod(np.trunc(centred).astype(np.int64), 256).astype(np.uint8))


def dense_crf(img, probs, iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3,
              backend="pydensecrf", device=None):
    """Mean-field dense CRF on softmax probabilities (C, H, W) with a uint8 (H, W, 3) image; returns Q (C, H, W).
    The keywords are deeplab-pytorch's names (CRF)."""
    return imutils.dense_crf(img, probs, iter_max, pos_xy_std, pos_w, bi_xy_std, bi_rgb_std, bi_w, backend, device)


def finish(img, probs, out_path, crf, crf_mode="reference", palette=None):
    """CRF with pydensecrf (optional; on crf_image(img, crf_mode)), argmax, palette PNG. Runs in a pool process
    when there are several."""
    if crf:
        probs = dense_crf(crf_image(img, crf_mode), probs, **CRF)
    imutils.save_label_png(out_path, np.argmax(probs, axis=0).astype(np.uint8), palette)
    return out_path


def finish_batch(jobs, crf_mode, device, palette=None):
    """finish() of several images with one torch CRF call on `device` (--crf_backend torch)."""
    c = CRF
    qs = imutils.dense_crf_batch([crf_image(img, crf_mode) for img, _, _ in jobs], [p for _, p, _ in jobs],
                                 c["iter_max"], c["pos_xy_std"], c["pos_w"], c["bi_xy_std"], c["bi_rgb_std"],
                                 c["bi_w"], backend="torch", device=device)
    for (_, _, out_path), q in zip(jobs, qs):
        imutils.save_label_png(out_path, np.argmax(q, axis=0).astype(np.uint8), palette)


def load_model(args):
    model = deeplab.build(len(args.data.class_names), args.seg_arch, args.seg_backbone_depth, "none")
    torchutils.load_checkpoint(model, args.seg_weights_name, what="segmentation weights",
                               written_by="step train_seg")
    model = model.to(args.device).eval()
    if str(args.device).startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def probabilities(model, img, args):
    """Softmax of the fused logits of one RGB uint8 image: float32 (21, H, W)."""
    x = torch.from_numpy(imutils.HWC_to_CHW(imutils.Normalize()(img)))[None]
    with training.autocast(args.device, args.amp):
        logits = model.infer(training.to_device(x, args.device), tuple(args.seg_infer_scales), args.seg_infer_flip)
    return torch.softmax(logits[0].float(), dim=0).cpu().numpy()


def predict(model, names, out_dir, args, desc):
    """Palette PNGs of `names` (this process's share) into out_dir; images with a fresh PNG are skipped."""
    def out(n):
        return os.path.join(out_dir, n + ".png")

    todo = [names[i] for i in perimage.pending(desc, names, out, args, lambda n: (args.seg_weights_name,),
                                               out_dirs=[out_dir])]
    pool, batch, palette = None, [], args.data.palette
    torch_crf = args.seg_crf and args.crf_backend == "torch"
    if args.seg_crf and not torch_crf and args.num_workers > 1 and len(todo) > 1:
        # the CRF is single-threaded and takes about as long as a forward on a GPU: a pool keeps up with it
        pool = multiprocessing.get_context("spawn").Pool(args.num_workers)
    pending = collections.deque()
    try:
        with torch.inference_mode():
            for n in tqdm(todo, desc=desc, disable=not dist.is_main(), dynamic_ncols=True):
                img = imutils.read_image(get_img_path(n, args.data))
                job = (img, probabilities(model, img, args), out(n), args.seg_crf, args.seg_crf_image, palette)
                if torch_crf:  # the CRFs go to the device in batches
                    batch.append(job[:3])
                    if len(batch) == args.crf_batch:
                        finish_batch(batch, args.seg_crf_image, args.device, palette)
                        batch = []
                    continue
                if pool is None:
                    finish(*job)
                    continue
                pending.append(pool.apply_async(finish, job))
                while len(pending) > 2 * args.num_workers:  # bounded: each job holds 21 float maps
                    pending.popleft().get()
            while pending:
                pending.popleft().get()
            if batch:
                finish_batch(batch, args.seg_crf_image, args.device, palette)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    dist.barrier()


@dist.main_only
def score(args, names):
    conf = metrics.ConfusionMatrix(args.data.class_names)
    for n in tqdm(names, desc="eval_seg score", dynamic_ncols=True):
        pred = imutils.read_label_png(os.path.join(args.seg_out_dir, n + ".png"), num_classes=conf.n)
        conf.update(gt_mask(args.data, n), pred, n)
    result = conf.as_dict()
    result.update(list=args.seg_val_list, arch=args.seg_arch, scales=list(args.seg_infer_scales),
                  flip=bool(args.seg_infer_flip), crf=bool(args.seg_crf),
                  crf_image=args.seg_crf_image)
    pyutils.log(metrics.format_iou_table(result, f"segmentation IoU ({args.stage}, {args.seg_arch}, "
                                                 f"{args.seg_val_list}, crf {args.seg_crf})"))
    metrics.record(args.results_path, args.stage, "seg", result)
    return result


def test_ids(args):
    """Ids of --seg_test_list, or [] with a log line when it is '' or when any of its images is not in the devkit
    (VOC 2012's test images are a separate download; the toy devkit has none of them, though its held-out ids
    may collide with a few): a submission needs every image."""
    path = args.seg_test_list
    if not path:
        pyutils.log("eval_seg: --seg_test_list is empty, no test-set predictions")
        return []
    names = load_img_name_list(path)
    missing = [n for n in names if not os.path.isfile(get_img_path(n, args.data))]
    if missing:
        pyutils.log(f"eval_seg: {len(missing)} of the {len(names)} images of {path} are not in the devkit (e.g. "
                    f"{get_img_path(missing[0], args.data)}; VOC 2012's test images are a separate download), "
                    "no test-set predictions")
        return []
    return names


@dist.main_only
def write_tar(root, names):
    """<root>/results.tar holding results/VOC2012/Segmentation/comp6_test_cls/<id>.png, what the server takes."""
    path = os.path.join(root, "results.tar")
    with pyutils.atomic_path(path) as tmp:
        with tarfile.open(tmp, "w") as tar:
            for n in names:
                arc = os.path.join(SUBMISSION, n + ".png")
                tar.add(os.path.join(root, arc), arcname=arc)
    pyutils.log(f"wrote {path} ({len(names)} test predictions)")
    return path


def run(args):
    model = load_model(args)
    val = load_img_name_list(args.seg_val_list)
    pyutils.log(f"eval_seg: scales {list(args.seg_infer_scales)}, flip {args.seg_infer_flip}, "
                f"CRF {args.seg_crf} (image: {args.seg_crf_image})")
    predict(model, val, args.seg_out_dir, args, "eval_seg val")
    result = score(args, val)
    names = test_ids(args)
    if names:
        predict(model, names, os.path.join(args.seg_test_out_dir, SUBMISSION), args, "eval_seg test")
        write_tar(args.seg_test_out_dir, names)
    return result
