"""Step 1 of SEAM (seam): train SEAM's ResNet-38 with its pixel correlation module (YudeWang/SEAM
train_SEAM.py), the siamese step exactly as the reference (net.resnet38_SEAM.seam_loss).

Settings (SPEC_RESNET38 3.1, the method's defaults in misc/methods.py): long side 448..768, flip, colour
jitter 0.3/0.3/0.3/0.1, normalise, random 448 crop padded with 0 after normalising; batch 8, 8 epochs, poly
SGD lr 0.01 over the four ResNet-38 groups (f8_3, f8_4, f9, fc8 at x10), weight decay 5e-4, momentum = weight
decay (the reference's quirk); no validation. Per step the second view is the 0.3x rescale of the batch and
the loss is cls/2 + rvmin/2 + ER + ECR. With args.cda (stage II) the batch is 4 originals and their 4 copies;
each image is paired with its own 0.3x view only, never with its copy (SPEC_RESNET38 4.3).

args read: the classifier's (train_list, cam_* flags, backbone_weights, from_scratch, resnet38_width) and
seam_scale_factor, seam_ecr_topk. Not under torchrun: the step runs the network twice before one backward,
which DistributedDataParallel's gradient hooks do not take.
"""
from misc import classifier, dist, pyutils
from net import resnet38_SEAM
from voc12.dataloader import classification_sets


def seam_batch_loss(model, batch, device, scale_factor, ecr_topk):
    img, label = classifier.unpack(batch, device)  # a CDA batch: [originals; copies], each with its own label
    terms = resnet38_SEAM.seam_loss(model, img, label, scale_factor=scale_factor, ecr_topk=ecr_topk)
    return terms["total"], {k: terms[k].item() for k in ("cls", "rvmin", "er", "ecr")}


def add_arguments(g):
    g.add_argument("--seam_scale_factor", default=0.3, type=float, help="the second view: the batch rescaled by this")
    g.add_argument("--seam_ecr_topk", default=0.2, type=float,
                   help="ECR loss: mean of this top fraction of each image's errors")


def check_arguments(args):
    if not 0 < args.seam_scale_factor <= 1 or not 0 < args.seam_ecr_topk <= 1:
        raise pyutils.UserError("--seam_scale_factor and --seam_ecr_topk must be within (0, 1]")


def run(args):
    if dist.is_dist():
        raise pyutils.UserError("train_seam does not run under torchrun (two forward passes per step); run it in "
                                "one process (--train_seam_pass alone), then the other steps under torchrun")
    train_set, _ = classification_sets(args, validation=False)  # SEAM validates nothing

    def build_model():
        model = resnet38_SEAM.Net(args.data.num_classes, backbone_weights=args.backbone_weights, from_scratch=args.from_scratch,
                                  width=args.resnet38_width)
        return model, model.optimizer_groups(args.cam_learning_rate, args.cam_weight_decay)

    classifier.train_classifier(args, train_set, None, build_model, "train_seam",
                                loss_fn=lambda m, b, d: seam_batch_loss(m, b, d, args.seam_scale_factor, args.seam_ecr_topk))
