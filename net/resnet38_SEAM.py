"""SEAM on ResNet-38 (YudeWang/SEAM network/resnet38_SEAM.py, train_SEAM.py): network, PCM and losses.

Network: conv6 -> Dropout2d(0.5) -> fc8 (1x1 conv 4096 -> 1 + K, no bias; channel 0 is the background)
gives the CAM at stride 8. The pixel correlation module (PCM) refines a no-grad, max-only copy of it
with affinities of f = f9(cat[image at feature size, relu(f8_3(conv4)), relu(f8_4(conv5))]) (the
backbone taps detached): cam_rv = cam_pcm @ column-normalised relu(cosine similarity). forward(x)
returns (cam, cam_rv), both upsampled to the input size. Keys: the backbone's, then fc8, f8_3, f8_4,
f9 (dropout7 has none), as SEAM's released checkpoints.

Training step (seam_loss, seam/train_SEAM.py:104-142): a second view rescaled by 0.3; per view a
classification loss on the global average of the upsampled CAM, the rvmin loss on the PCM output;
an L1 equivariance loss (ER) between the two views' normalised CAMs and the cross loss (ECR) between
each view's PCM output and the other view's max-only CAM, averaged over its top 20 %. The loss helpers
are pure functions: SEAM's max_onehot writes into its argument, ours returns a new tensor.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from net import resnet38d

class Net(resnet38d.Net):
    # conv1a and stage 2 keep their ImageNet weights (seam/network/resnet38_SEAM.py:27)
    NOT_TRAINING = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, num_classes, backbone_weights="none", from_scratch=False, width=1.0):
        """num_classes: the object classes K; fc8 has K + 1 channels, channel 0 the background."""
        super().__init__(backbone_weights, from_scratch, width)
        c = resnet38d.channels(width)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(c(4096), num_classes + 1, 1, bias=False)
        self.f8_3 = nn.Conv2d(c(512), c(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(c(1024), c(128), 1, bias=False)
        # the image itself (3 channels at feature size) joins the PCM features
        self.f9 = nn.Conv2d(3 + c(64) + c(128), c(192), 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        # lr x10 (get_parameter_groups); SEAM lists the PCM layers and fc8 (:26)
        self.from_scratch_layers = [self.f8_3, self.f8_4, self.f9, self.fc8]

    def forward(self, x, with_parts=False):
        """x (N, 3, H, W) normalised image -> (cam, cam_rv), each (N, 1 + K, H, W): the raw CAM and the
        PCM's refinement, bilinearly upsampled (align_corners=True) from stride 8 (:29-50).
        with_parts=True also returns forward_parts' dict: (cam, cam_rv, parts)."""
        parts = self.forward_parts(x)
        size = x.shape[2:]
        cam_rv = F.interpolate(parts["cam_rv"], size, mode="bilinear", align_corners=True)
        cam = F.interpolate(parts["cam"], size, mode="bilinear", align_corners=True)
        return (cam, cam_rv, parts) if with_parts else (cam, cam_rv)

    def forward_parts(self, x):
        """The stride-8 maps of forward: 'cam' (fc8 output), 'pcm_input' (pcm_input(cam), no grad),
        'feat' (the PCM's input features, 3 + 64 + 128 channels), 'cam_rv' (the PCM output)."""
        d = self.forward_as_dict(x)
        cam = self.fc8(self.dropout7(d["conv6"]))
        h, w = cam.shape[2:]
        with torch.no_grad():
            cam_in = pcm_input(cam.detach())
        f8_3 = F.relu(self.f8_3(d["conv4"].detach()))
        f8_4 = F.relu(self.f8_4(d["conv5"].detach()))
        x_small = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
        feat = torch.cat([x_small, f8_3, f8_4], dim=1)
        return {"cam": cam, "pcm_input": cam_in, "feat": feat, "cam_rv": self.pcm(cam_in, feat)}

    def pcm(self, cam, feat):
        """Pixel correlation module (:52-63): cam (N, C, h, w) propagated with the affinities of
        f9(feat) (N, *, h, w): aff[i, j] = relu(<f_i, f_j>) of the L2-normalised features, each column
        divided by its sum (+1e-5); returns cam @ aff as (N, C, h, w).

        SEAM first resizes cam to feat's size; both come from stride-8 maps of the same input, so
        the sizes always agree and that resize (the identity) is left out."""
        n, _, h, w = feat.shape
        f = self.f9(feat).flatten(2)
        f = f / (torch.norm(f, dim=1, keepdim=True) + 1e-5)
        aff = F.relu(torch.matmul(f.transpose(1, 2), f))
        aff = aff / (torch.sum(aff, dim=1, keepdim=True) + 1e-5)
        return torch.matmul(cam.flatten(2), aff).view(n, -1, h, w)

    # get_parameter_groups / optimizer_groups / trainable_parameters: resnet38d.Net's, which are SEAM's
    # (seam/network/resnet38_SEAM.py:65-84; train_SEAM.py:79-84: lr x1/x2/x10/x20, weight decay on the
    # weight groups) with from_scratch_layers above in the x10 group.


def pcm_input(cam):
    """The CAM as the PCM takes it (seam/network/resnet38_SEAM.py:34-40), no label mask: each channel
    relu'd and divided by its spatial maximum (relu(c - 1e-5) / (max + 1e-5)); channel 0 := 1 - the
    maximum over channels 1..K; in channels 1..K every value below that maximum := 0 (ties kept).
    An absent class can therefore win a pixel and zero the present ones there."""
    cam = F.relu(cam)
    peak = torch.amax(cam, dim=(2, 3), keepdim=True) + 1e-5
    norm = F.relu(cam - 1e-5) / peak
    fg = norm[:, 1:]
    top = torch.amax(fg, dim=1, keepdim=True)
    fg = torch.where(fg < top, torch.zeros_like(fg), fg)
    return torch.cat([1 - top, fg], dim=1)


# ---------------------------------------------------------------------------------------------
# Loss helpers (seam/train_SEAM.py:16-30, seam/tool/visualization.py:62-67)


def max_norm(p, e=1e-5):
    """Per-map min-max normalisation of SEAM's max_norm (torch version, 3-D or 4-D input): relu, then
    relu(p - min - e) / (max - min + e) with min and max over the last two dimensions."""
    p = F.relu(p)
    # max/min with an index (not amax/amin): among tied extremes one element takes the gradient, as in SEAM
    flat = p.flatten(-2)
    hi = torch.max(flat, dim=-1)[0][..., None, None]
    lo = torch.min(flat, dim=-1)[0][..., None, None]
    return F.relu(p - lo - e) / (hi - lo + e)


def max_onehot(x):
    """x (N, C, H, W) with channels 1.. kept only where they equal the per-pixel maximum over channels
    1.. (the value, not 1; ties all kept), else 0; channel 0 unchanged. A new tensor: SEAM's version
    writes into x (train_SEAM.py:26-30)."""
    fg = x[:, 1:]
    top = torch.amax(fg, dim=1, keepdim=True)
    fg = torch.where(fg != top, torch.zeros_like(fg), fg)
    return torch.cat([x[:, :1], fg], dim=1)


def adaptive_min_pooling_loss(x):
    """rvmin loss (train_SEAM.py:16-24): the k = H*W // 4 smallest per-pixel maxima over channels of each
    image, relu'd, summed over the batch and divided by k * N."""
    n, _, h, w = x.shape
    k = h * w // 4
    top = torch.max(x, dim=1)[0]  # one channel takes the gradient of a tied maximum, as in SEAM
    lowest = torch.topk(top.view(n, -1), k=k, dim=-1, largest=False)[0]
    return torch.sum(F.relu(lowest)) / (k * n)


def with_background(cam):
    """cam with channel 0 := 1 - the maximum over channels 1.. (train_SEAM.py:131-132), a new tensor."""
    fg = cam[:, 1:]
    return torch.cat([1 - torch.amax(fg, dim=1, keepdim=True), fg], dim=1)


def top_fraction_mean(err, fraction):
    """Mean of the int(C*H*W*fraction) largest values of each image of err (N, C, H, W), over the batch
    (train_SEAM.py:137-138; the product is evaluated in SEAM's order, C*H*W*fraction)."""
    n, c, h, w = err.shape
    k = int(c * h * w * fraction)
    return torch.mean(torch.topk(err.reshape(n, -1), k=k, dim=-1)[0])


def seam_loss(model, img, label, scale_factor=0.3, ecr_topk=0.2):
    """One SEAM training step's loss (seam/train_SEAM.py:104-142).

    img (N, 3, H, W) normalised batch; label (N, K) 0/1 image labels (the background's 1 is prepended
    here). Returns a dict of 0-d tensors: 'total' = (cls1 + cls2)/2 + (rvmin1 + rvmin2)/2 + er +
    (ecr1 + ecr2), and each term ('cls', 'rvmin', 'ecr' are the pairs combined as in the total).

    Details as SEAM: the second view is interpolate(img, scale_factor, bilinear, align_corners=True);
    each view's logits are the global average of its upsampled CAM (channels 1.., the background logit
    is not trained); rvmin takes the label-masked PCM output's channels 1..; the first view's maps are
    max_norm'ed and then rescaled by scale_factor (align_corners=True) onto the second's size; all
    normalised maps are label-masked (background kept); ER is the mean |cam1 - cam2| over channels
    1..; for ECR, channel 0 of both normalised CAMs becomes 1 - their maximum, and |max_onehot(other
    view's CAM, detached) - PCM output| over all 1 + K channels is averaged over its top ecr_topk per
    image. fc8's background row gets no gradient from any term."""
    n = img.shape[0]
    img2 = F.interpolate(img, scale_factor=scale_factor, mode="bilinear", align_corners=True)
    label = torch.cat([torch.ones_like(label[:, :1]), label], dim=1).view(n, -1, 1, 1).to(img.dtype)

    cam1, cam_rv1 = model(img)
    logit1 = F.adaptive_avg_pool2d(cam1, (1, 1))
    rvmin1 = adaptive_min_pooling_loss((cam_rv1 * label)[:, 1:])
    cam1 = F.interpolate(max_norm(cam1), scale_factor=scale_factor, mode="bilinear", align_corners=True) * label
    cam_rv1 = F.interpolate(max_norm(cam_rv1), scale_factor=scale_factor, mode="bilinear",
                            align_corners=True) * label

    cam2, cam_rv2 = model(img2)
    logit2 = F.adaptive_avg_pool2d(cam2, (1, 1))
    rvmin2 = adaptive_min_pooling_loss((cam_rv2 * label)[:, 1:])
    cam2 = max_norm(cam2) * label
    cam_rv2 = max_norm(cam_rv2) * label

    target = label[:, 1:].view(n, -1)
    cls1 = F.multilabel_soft_margin_loss(logit1[:, 1:].view(n, -1), target)
    cls2 = F.multilabel_soft_margin_loss(logit2[:, 1:].view(n, -1), target)

    er = torch.mean(torch.abs(cam1[:, 1:] - cam2[:, 1:]))

    ecr1 = top_fraction_mean(torch.abs(max_onehot(with_background(cam2.detach())) - cam_rv1), ecr_topk)
    ecr2 = top_fraction_mean(torch.abs(max_onehot(with_background(cam1.detach())) - cam_rv2), ecr_topk)

    cls = (cls1 + cls2) / 2
    rvmin = (rvmin1 + rvmin2) / 2
    ecr = ecr1 + ecr2
    total = cls + rvmin + er + ecr
    return {"total": total, "cls": cls, "rvmin": rvmin, "er": er, "ecr": ecr, "cls1": cls1, "cls2": cls2,
            "rvmin1": rvmin1, "rvmin2": rvmin2, "ecr1": ecr1, "ecr2": ecr2}
