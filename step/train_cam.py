"""Step 1 (irn): train IRNet's ResNet-50 classifier, whose class activation maps seed everything else.

IRNet's train_cam.py: long side 320..640, flip, random 512 crop, batch 16, 5 epochs, poly SGD with lr 0.1 for
the trained backbone stages and 10x for the classifier, weight decay 1e-4, momentum = weight decay (the
reference's quirk); the validation loss on val with a top-left crop. With args.cda (stage II) the batches are
CDA pairs (misc.classifier).
"""
from misc import classifier
from net import resnet50_cam
from voc12.dataloader import classification_sets


def run(args):
    train_set, val_set = classification_sets(args)

    def build_model():
        model = resnet50_cam.Net(args.data.num_classes, backbone_weights=args.backbone_weights, from_scratch=args.from_scratch)
        backbone, head = model.trainable_parameters()
        return model, [{"params": backbone, "lr": args.cam_learning_rate, "weight_decay": args.cam_weight_decay},
                       {"params": head, "lr": 10 * args.cam_learning_rate, "weight_decay": args.cam_weight_decay}]

    classifier.train_classifier(args, train_set, val_set, build_model, "train_cam")
