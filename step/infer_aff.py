"""Step 5 of AffinityNet (psa): pseudo masks by the random walk over AffinityNet's affinities
(jiwoon-ahn/psa infer_aff.py:70-122).

Per image: the normalised image zero-padded at the bottom and right to a multiple of 8 (0 after
normalising: the mean colour); AffinityNet's affinities of PSA's pairs at stride 8; the walk's scores:
channel k + 1 the CAM of class k (0 for absent classes), channel 0 (1 - max) ** --alpha, zero-padded and
averaged over 8x8 blocks; the walk T^(2^--exp_times) with T = aff ** --beta column-normalised (computed
sparse, misc.indexing.random_walk: the same result as PSA's dense n x n squaring); bilinear upsampling to
the padded size, argmax over the 1 + K channels, crop to the image. No CRF afterwards, as the reference.

Images: args.sem_seg_lists (stage I: --infer_list and --pool_list, each image once), else infer_list.
args read also: voc12_root, cls_labels, cam_out_dir, aff_weights_name, aff_radius, aff_seam_radius (SEAM's
small-map rule), resnet38_width, alpha, beta, exp_times,
sem_seg_out_dir, device, num_workers, force. Resumable and sharded under torchrun.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from misc import cams, imutils, indexing, perimage, pyutils, torchutils
from net import resnet38_aff
from voc12.dataloader import VOC12ClassificationDatasetMSF

STRIDE = 8


def walk_labels(model, img, high_res, keys, radius, alpha, beta, logt, num_classes):
    """uint8 (H, W) labels 0..num_classes for one normalised image (3, H, W) and its CAMs (K, H, W) of `keys`."""
    height, width = img.shape[-2:]
    padded = F.pad(img[None], (0, -width % STRIDE, 0, -height % STRIDE))
    aff = model(padded)[0]  # (n_dirs, n_src)
    grid_hw = (padded.shape[2] // STRIDE, padded.shape[3] // STRIDE)
    if getattr(model, "seam_small_maps", False):  # SEAM's rule: a smaller radius on small maps
        radius = model.radius_for(*grid_hw)
    grid = indexing.pairs_to_grid(aff, grid_hw, radius)
    scores = indexing.cam_walk_scores(high_res, keys, alpha, num_classes, stride=STRIDE).to(img.device)
    rw = indexing.random_walk(scores, grid, radius=radius, beta=beta, logt=logt)
    rw = F.interpolate(rw[None], padded.shape[2:], mode="bilinear", align_corners=False)[0]
    return torch.argmax(rw, dim=0)[:height, :width].cpu().numpy().astype(np.uint8)


def check_size(name, size, radius):
    """PSA's pairs need sources: at least `radius` rows and 2 * radius - 1 columns at stride 8."""
    min_h, min_w = STRIDE * (radius - 1) + 1, STRIDE * (2 * radius - 2) + 1
    if size[0] < min_h or size[1] < min_w:
        raise pyutils.UserError(f"image {name} is {size[1]}x{size[0]}: too small for AffinityNet's pairs of radius "
                                f"{radius}, which need at least {min_w}x{min_h} px; drop it from the list or "
                                f"lower --aff_radius")


def add_arguments(g):
    g.add_argument("--alpha", default=16, type=float, help="infer_aff: background (1 - max cam) ** alpha before the walk")


def check_arguments(args):
    pyutils.require_range(args, ("alpha",), positive=True)


def run(args):
    device = args.device
    model = resnet38_aff.Net(backbone_weights="none", radius=args.aff_radius, width=args.resnet38_width,
                             seam_small_maps=args.aff_seam_radius)
    torchutils.load_weights(model, args.aff_weights_name, "train_aff")
    model = model.to(device).eval()
    dataset = VOC12ClassificationDatasetMSF(args.sem_seg_lists, args.data, args.cls_labels, scales=(1.0,))

    def out(name):
        return os.path.join(args.sem_seg_out_dir, name + ".png")

    todo = perimage.pending("infer_aff", dataset.img_name_list, out, args,
                            lambda n: (args.aff_weights_name, cams.cam_path(args.cam_out_dir, n)),
                            out_dirs=[args.sem_seg_out_dir])

    def work(pack):
        size = tuple(int(s) for s in pack["size"])
        if not args.aff_seam_radius:
            check_size(pack["name"], size, args.aff_radius)
        keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0].numpy()
        cam = cams.load_cam(args.cam_out_dir, pack["name"], size, keys, strided=False, num_classes=args.data.num_classes)
        img = torch.as_tensor(pack["img"][0][0]).to(device)
        label = walk_labels(model, img, cam["high_res"], cam["keys"], args.aff_radius, args.alpha, args.beta,
                            args.exp_times, args.data.num_classes)
        imutils.save_label_png(out(pack["name"]), label, args.data.palette)

    perimage.for_each_loaded("infer_aff", dataset, todo, work, args.num_workers)
