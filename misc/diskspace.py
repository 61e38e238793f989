"""Disk space of the per-image steps with large outputs: an estimate before the first step, and what a step that
met a full disk still needed.

Bytes per image, from each step's file format (uncompressed .npz: misc/cams.py, step/cam_to_crf.py) or measured:
- CAMs (make_cam, infer_cls, infer_seam): `high_res` K x H x W, plus make_cam's stride-4 `cam` (1/16 of it),
  float32 (float16 with --compact_maps); K is the number of the image's classes in the label file;
- la and ha score maps (cam_to_crf): one file each of (1 + K) x H x W;
- IR labels (cam_to_ir_label) and pseudo masks (make_sem_seg, infer_aff): palette PNGs. Masks of VOC-size synthetic
  images measured 0.015-0.021 bytes per pixel; real masks have noisier edges, so 0.05 is counted.
H x W is the mean area of up to SAMPLE images spread over the step's list (their headers alone are read). An
output that exists already (a resumed run) needs no space; the other steps write little (weights, a PNG per
evaluated image, the instance pool's crops).
"""
import os

from misc import imutils, pyutils, stages

NPZ_ARRAY = 300  # bytes of zip and .npy headers per array of an uncompressed .npz
PNG_PER_PIXEL = 0.05
SAMPLE = 64


def npz_bytes(*arrays):
    return sum(int(n) + NPZ_ARRAY for n in arrays)


def cam_bytes(area, k, item, strided):
    return npz_bytes(8 * k, item * k * area, *([item * k * area / 16] if strided else []))


def png_bytes(area, k, item):
    return 1000 + PNG_PER_PIXEL * area


# step -> (its output folders (stage I names), the suffix of an image's file there, the attribute of the stage's
# args that names the images (a list file or several), bytes of one file: f(mean area, classes, bytes per value))
STEPS = {
    "make_cam": (("cam_out_dir",), ".npz", "train_list", lambda area, k, item: cam_bytes(area, k, item, True)),
    "infer_cls": (("cam_out_dir",), ".npz", "train_list", lambda area, k, item: cam_bytes(area, k, item, False)),
    "infer_seam": (("cam_out_dir",), ".npz", "train_list", lambda area, k, item: cam_bytes(area, k, item, False)),
    "cam_to_crf": (("la_crf_dir", "ha_crf_dir"), ".npz", "train_list",
                   lambda area, k, item: npz_bytes(8 * (k + 1), item * (k + 1) * area, 8)),
    "cam_to_ir_label": (("ir_label_out_dir",), ".png", "train_list", png_bytes),
    "make_sem_seg": (("sem_seg_out_dir",), ".png", "sem_seg_lists", png_bytes),
    "infer_aff": (("sem_seg_out_dir",), ".png", "sem_seg_lists", png_bytes),
}


class Space:
    """The estimates of one run. read_list(path or paths) -> image ids; read_labels() -> {id: multi-hot classes}
    (read once, when first needed)."""

    def __init__(self, args, read_list, read_labels):
        self.args, self.read_list, self.read_labels = args, read_list, read_labels
        self.classes, self.areas = None, {}

    def mean_area(self, key, names):
        if key not in self.areas:
            sample = names[::max(1, len(names) // SAMPLE)][:SAMPLE]
            sizes = [imutils.image_size(self.args.data.image_path(n)) for n in sample]
            self.areas[key] = sum(h * w for h, w in sizes) / max(1, len(sizes))
        return self.areas[key]

    def still_needed(self, a, step):
        """(output folders, bytes, images) that `step` would still write with the stage's args `a`: its images whose
        file is missing, each by its classes and the mean area of the list. None for a step of small outputs."""
        if step not in STEPS:
            return None
        flags, suffix, list_attr, size = STEPS[step]
        source = getattr(a, list_attr)
        names = self.read_list(source)
        if self.classes is None:
            self.classes = {n: int(v.sum()) for n, v in self.read_labels().items()}
        area = self.mean_area(tuple(source) if isinstance(source, (list, tuple)) else source, names)
        item = 2 if getattr(a, "compact_maps", False) else 4
        folders = [getattr(a, f) for f in flags]
        total, images = 0, 0
        for n in names:
            missing = [d for d in folders if not os.path.exists(os.path.join(d, n + suffix))]
            total += len(missing) * size(area, self.classes.get(n, 1), item)
            images += bool(missing)
        return folders, int(total), images

    def need_text(self, a, step, label):
        """'<label> still needed about N by estimate (M images x B each)' for the message of a full disk, or None."""
        try:
            found = self.still_needed(a, step)
        except (OSError, pyutils.UserError):  # the estimate must not hide the error it explains
            return None
        if not found or not found[1]:
            return None
        _, total, images = found
        return (f"{label} still needed about {pyutils.format_bytes(total)} by estimate ({images} images x "
                f"{pyutils.format_bytes(total // images)})")

    def plan(self):
        """[(stage label, step, folders, bytes)] of the enabled steps with large outputs, in running order."""
        rows = []
        for stage in stages.ran(self.args):
            a = stages.stage_args(self.args, stage)
            for step in stages.steps(self.args, stage):
                found = self.still_needed(a, step)
                if found:
                    rows.append((stage.label, step, *found))
        return rows

    def report(self):
        """Log the estimate, and a warning for each disk that holds less than its outputs will take: it names the
        first step that would not fit, its estimate, all steps' until then and the free space."""
        try:
            rows = [r[:4] for r in self.plan() if r[3]]
        except (OSError, pyutils.UserError) as e:  # an estimate never stops a run
            pyutils.log(f"disk space: no estimate ({pyutils.one_line(e)})")
            return
        if not rows:
            return
        pyutils.log("disk space, by estimate: " + ", ".join(f"{label} {step} {pyutils.format_bytes(n)}"
                                                             for label, step, _, n in rows))
        used, warned = {}, set()
        for label, step, folders, n in rows:
            disk = _device(folders[0])
            used[disk] = used.get(disk, 0) + n
            free = pyutils.free_bytes(folders[0])
            if used[disk] > free and disk not in warned:
                warned.add(disk)
                before = f" ({pyutils.format_bytes(used[disk])} with the steps before it)" if used[disk] > n else ""
                pyutils.log(f"warning: not enough disk space, by estimate: {label} {step} writes about "
                            f"{pyutils.format_bytes(n)} into {', '.join(folders)}{before}, "
                            f"{pyutils.format_bytes(free)} free there; free space or point the large outputs elsewhere (--cam_out_dir, --la_crf_dir, "
                            "--ha_crf_dir, ...; --compact_maps halves the maps), or the run stops at a full disk and "
                            "resumes when rerun")


def _device(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.stat(path).st_dev
