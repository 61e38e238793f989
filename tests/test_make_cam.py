"""make_cam's multi-scale sum, strided and high-res sizes, key selection and max normalisation."""
import numpy as np
import torch
import torch.nn.functional as F

from step.make_cam import cams_for_image, strided_size


class FakeCAM(torch.nn.Module):
    """Stands in for net.resnet50_cam.CAM: a known (20, h/16, w/16) map per input pair."""

    def forward(self, x):
        h, w = (x.shape[2] - 1) // 16 + 1, (x.shape[3] - 1) // 16 + 1
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        base = 10 * (yy + 2 * xx + 1)
        return torch.stack([base * (c + 1) * x[0, 0, 0, 0] for c in range(20)])


def test_sizes_keys_and_normalisation():
    size = (75, 101)
    scales = [torch.ones(2, 3, *size), torch.full((2, 3, 38, 51), 2.0)]
    keys = torch.tensor([3, 11])
    cam, high = cams_for_image(FakeCAM(), scales, size, keys, "cpu")
    assert cam.shape == (2,) + strided_size(size, 4) == (2, 19, 26)
    assert high.shape == (2, 75, 101)
    for maps in (cam, high):
        peaks = maps.flatten(1).max(1).values
        assert torch.all((peaks - 1).abs() < 1e-5)  # max / (max + 1e-5) with large maxima
        assert maps.min() >= 0
    # the same computation by hand for the stride-4 map of key 3
    outs = [FakeCAM()(s)[None] for s in scales]
    want = sum(F.interpolate(o, (19, 26), mode="bilinear", align_corners=False)[0] for o in outs)[3]
    want = want / (want.max() + 1e-5)
    torch.testing.assert_close(cam[0], want)


def test_high_res_is_cropped_from_stride_16_grid():
    size = (40, 50)  # 16 * ceil(40/16) = 48 rows, 16 * ceil(50/16) = 64 columns before cropping
    img = [torch.ones(2, 3, *size)]
    _, high = cams_for_image(FakeCAM(), img, size, torch.tensor([0]), "cpu")
    full = F.interpolate(FakeCAM()(img[0])[None, :1], (48, 64), mode="bilinear", align_corners=False)[0, 0]
    want = full[:40, :50] / (full[:40, :50].max() + 1e-5)
    np.testing.assert_allclose(high[0].numpy(), want.numpy(), rtol=1e-6)
