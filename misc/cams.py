"""CAM files: the format that make_cam (irn), infer_cls (psa) and infer_seam (seam) write and every later
step reads.

<cam_dir>/<id>.npz holds `keys` (int64, the image's 0-based classes in ascending order), `high_res` (K, H, W)
float32 at the image size and, from make_cam only, `cam` (K, ceil(H/4), ceil(W/4)) at stride 4; each map is
normalised by its maximum (SEAM: its min-max rule). No pickle. With --compact_maps the maps are stored as float16
(half the bytes; README, Disk space); load_cam returns float32 either way.
"""
import os

import numpy as np
import torch

from misc import perimage, pyutils


def strided_size(size, stride):
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def cam_path(cam_dir, name):
    return os.path.join(cam_dir, name + ".npz")


def load_cam(cam_dir, name, size=None, keys=None, strided=True, num_classes=None):
    """Read one CAM file and check it: arrays that fit together, made for an image of `size` (H, W) and,
    given `keys` (the image's 0-based classes), for those classes; keys below num_classes. A file that fails
    is a UserError. strided=False accepts files without the stride-4 `cam` (infer_cls of psa writes `keys`
    and `high_res`)."""
    path = cam_path(cam_dir, name)
    pyutils.require_file(path, "CAM file", "run the CAM step first (make_cam, infer_cls or infer_seam)")
    d = pyutils.load_npz(path, keys=("keys", "cam", "high_res") if strided else ("keys", "high_res"))
    k, high = d["keys"], d["high_res"]
    cam = d.get("cam", high)  # without a stride-4 map, the checks below see high_res twice
    if not (k.ndim == 1 and k.dtype.kind in "iu" and cam.ndim == 3 and high.ndim == 3
            and cam.shape[0] == high.shape[0] == k.size and (k >= 0).all()
            and (num_classes is None or (k < num_classes).all())):
        raise pyutils.UserError(f"{path} is not a CAM file of make_cam (keys {k.tolist()[:25]}, cam {cam.shape}, "
                                f"high_res {high.shape}); delete it and rerun make_cam")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        h4, w4 = strided_size(size, 4) if "cam" in d else size
        if high.shape[1:] != size or cam.shape[1:] != (h4, w4):
            raise pyutils.UserError(f"{path} does not fit {name}, a {size[1]}x{size[0]} image: its high_res is "
                                    f"{high.shape[2]}x{high.shape[1]}, its stride-4 cam {cam.shape[2]}x{cam.shape[1]} "
                                    f"(expected {w4}x{h4}); it is another image's: rerun make_cam with --force")
    if keys is not None and not np.array_equal(k, np.asarray(keys).reshape(-1)):
        raise pyutils.UserError(f"{path} holds the CAMs of classes {k.tolist()}, but {name} has classes "
                                f"{np.asarray(keys).reshape(-1).tolist()}; rerun make_cam with --force")
    for m in ("cam", "high_res"):  # float16 files of --compact_maps: the steps compute in float32
        if m in d:
            d[m] = d[m].astype(np.float32, copy=False)
    return d


def load_cam_scores(cam_dir, name, size, keys=None, num_classes=None):
    """(keys as int64, high_res) of one CAM file, checked as load_cam does (a stride-4 map is not needed)."""
    d = load_cam(cam_dir, name, size, keys, strided=False, num_classes=num_classes)
    return d["keys"].astype(np.int64), d["high_res"]


def save_cams(cam_dir, name, keys, high_res, cam=None, compact=False):
    """Write one CAM file; compact: the maps as float16 (--compact_maps), else float32."""
    dtype = np.float16 if compact else np.float32
    arrays = dict(keys=np.asarray(keys).astype(np.int64), high_res=high_res.cpu().numpy().astype(dtype))
    if cam is not None:
        arrays["cam"] = cam.cpu().numpy().astype(dtype)
    pyutils.save_npz(cam_path(cam_dir, name), **arrays)


def write_cams(args, dataset, model, cams_fn, desc):
    """For every image of `dataset` (multi-scale [image, flip] stacks, voc12's ...DatasetMSF) still to do,
    cams_fn(model, per-scale stacks, (H, W), keys on the device, device, amp) -> (K, H, W) into
    <cam_out_dir>/<id>.npz (`keys`, `high_res`). Shared by infer_cls and infer_seam."""
    device = args.device
    todo = perimage.pending(desc, dataset.img_name_list, lambda n: cam_path(args.cam_out_dir, n), args,
                            lambda n: (args.cam_weights_name,), out_dirs=[args.cam_out_dir])

    def work(pack):
        size = tuple(int(s) for s in pack["size"])
        keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0]
        high = cams_fn(model, [torch.as_tensor(x) for x in pack["img"]], size, keys.to(device), device, args.amp)
        save_cams(args.cam_out_dir, pack["name"], keys.numpy(), high, compact=getattr(args, "compact_maps", False))

    perimage.for_each_loaded(desc, dataset, todo, work, args.num_workers)
