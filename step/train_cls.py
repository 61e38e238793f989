"""Step 1 of AffinityNet (psa): train PSA's ResNet-38 classifier (jiwoon-ahn/psa train_cls.py).

Settings (SPEC_RESNET38 2.1, the method's defaults in misc/methods.py): long side 256..512 (bicubic), flip,
colour jitter 0.3/0.3/0.3/0.1, normalise, random 448 crop padded with 0 after normalising (the mean colour);
batch 16, 15 epochs, poly SGD with lr 0.1 x1/x2/x10/x20 over PSA's four parameter groups, weight decay 5e-4
on weights only, momentum = weight decay (the reference's quirk); validation loss on val with a centre 500
crop and drop_last. With args.cda (stage II) the batches are CDA pairs, as train_cam's.
"""
from misc import classifier
from net import resnet38_cls
from voc12.dataloader import classification_sets


def run(args):
    train_set, val_set = classification_sets(args)

    def build_model():
        model = resnet38_cls.Net(args.data.num_classes, backbone_weights=args.backbone_weights, from_scratch=args.from_scratch,
                                 width=args.resnet38_width)
        return model, model.optimizer_groups(args.cam_learning_rate, args.cam_weight_decay)

    classifier.train_classifier(args, train_set, val_set, build_model, "train_cls")
