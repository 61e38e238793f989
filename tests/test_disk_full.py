"""A full disk: a write that fails with ENOSPC (or EDQUOT) is one line naming the folder, the space left and what
to do, exit status 2, no temporary file; after space is freed the same command finishes with the outputs of an
uninterrupted run. The failure is injected into the writers under atomic_path, and (where this machine lets us
mount one) met for real on a small tmpfs."""
from test_reliability import base, copy_base, flags, only  # noqa: F401 (base is a fixture)
import errno
import io
import os
import subprocess

import numpy as np
import PIL.Image
import pytest
import torch

import run_sample
from misc import pyutils, training
from test_dist import same_file


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def temp_files(root):
    return [p for p in root.rglob("*") if pyutils.TEMP_NAME.match(p.name)]


def error_line(capsys):
    """The driver's error: one line, the last of stderr (after the progress bar's)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1].split("\r")[-1]


def enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_line(err):
    msg = str(err)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- atomic_path


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out" / "a.json"
    pyutils.save_json(str(out), {"old": 1})
    with pytest.raises(pyutils.UserError) as e:
        with pyutils.atomic_path(str(out)) as tmp:
            with open(tmp, "w") as f:
                f.write("half a fi")
            raise enospc()
    msg = one_line(e.value)
    assert msg.startswith(f"no space left on the disk while writing into {tmp_path / 'out'} (")
    assert " free there): free space on that disk, then rerun the same command" in msg and "--resume" in msg
    assert isinstance(e.value.__cause__, OSError)
    assert pyutils.load_json(str(out)) == {"old": 1} and not temp_files(tmp_path)  # the old file as it was


@pytest.mark.parametrize("code,words", [(errno.EDQUOT, "disk quota exceeded"), (errno.ENOSPC, "no space left")])
def test_chained_and_quota_errors(tmp_path, code, words):
    with pytest.raises(pyutils.UserError, match=words):
        with pyutils.atomic_path(str(tmp_path / "x.npz")):
            try:
                raise OSError(code, os.strerror(code))
            except OSError as err:
                raise RuntimeError("writer failed") from err  # a library wrapping the OSError
    assert not temp_files(tmp_path)


def test_other_errors_stay_as_they_are(tmp_path):
    with pytest.raises(ValueError):
        with pyutils.atomic_path(str(tmp_path / "x")):
            raise ValueError("a bug")
    with pytest.raises(OSError) as e:
        with pyutils.atomic_path(str(tmp_path / "y")):
            raise OSError(errno.EIO, "input/output error")
    assert not isinstance(e.value, pyutils.UserError) and not temp_files(tmp_path)


def test_no_room_for_the_temporary_file(tmp_path, monkeypatch):
    def mkstemp(*a, **k):
        raise enospc()
    monkeypatch.setattr(pyutils.tempfile, "mkstemp", mkstemp)
    with pytest.raises(pyutils.UserError, match="no space left"):
        pyutils.save_npz(str(tmp_path / "a.npz"), x=np.zeros(3))


def test_free_bytes_and_require_free_space(tmp_path):
    free = pyutils.free_bytes(str(tmp_path / "not" / "made" / "yet"))
    st = os.statvfs(tmp_path)
    assert abs(free - st.f_bavail * st.f_frsize) < 2 ** 26  # the same disk (others may write meanwhile)
    pyutils.require_free_space(str(tmp_path / "cams"), 1, "make_cam")
    with pytest.raises(pyutils.UserError) as e:
        pyutils.require_free_space(str(tmp_path / "cams"), free + 2 ** 50, "make_cam")
    msg = one_line(e.value)
    assert msg.startswith(f"make_cam needs about {pyutils.format_bytes(free + 2 ** 50)} in {tmp_path / 'cams'}, ")
    assert "free there" in msg and "rerun the same command" in msg
    assert [pyutils.format_bytes(n) for n in (5, 2048, 3 * 2 ** 20, 2 ** 31)] == \
        ["5 bytes", "2.0 kB", "3.0 MB", "2.0 GB"]


# ---------------------------------------------------------------- a real per-image step


class FillingDisk:
    """The writer of `module.name` (PIL's Image.save, numpy's savez) on a disk that fills after `room` files:
    the next write puts half its bytes down, then fails with ENOSPC, and so does every later one."""

    def __init__(self, monkeypatch, owner, name, room):
        self.real, self.room, self.writes = getattr(owner, name), room, 0
        self.method = isinstance(owner, type)  # Image.save(self, fp, ...) or numpy.savez(file, ...)
        monkeypatch.setattr(owner, name, lambda *a, **k: self(*a, **k))  # a function: a method on Image

    def __call__(self, *args, **kwargs):
        self.writes += 1
        if self.writes <= self.room:
            return self.real(*args, **kwargs)
        first = 1 if self.method else 0
        target = args[first]
        buf = io.BytesIO()
        self.real(*args[:first], buf, *args[first + 1:], **kwargs)
        data = buf.getvalue()[:len(buf.getvalue()) // 2]
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(data)
        else:
            target.write(data)
        raise enospc()


STEPS = {  # step, its output folder under the work dir, the writer under its atomic_path
    "cam_to_ir_label": ("result/ir_label", PIL.Image.Image, "save"),
    "make_cam": ("result/cam", np, "savez"),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_step_on_a_full_disk_resumes_to_the_same_outputs(step, base, tmp_path, monkeypatch, capsys):  # noqa: F811
    folder, owner, name = STEPS[step]
    ref_dk, ref_work = copy_base(base, tmp_path / "ref")
    (ref_work / folder).rename(tmp_path / "ref_old")  # the step's outputs made anew (not rmtree: hard links)
    assert run_sample.main(flags(ref_dk, ref_work) + only(step)) == 0
    ref = sorted(p.name for p in (ref_work / folder).iterdir())
    assert len(ref) == 10

    devkit, work = copy_base(base, tmp_path / "full")
    (work / folder).rename(tmp_path / "full_old")
    disk = FillingDisk(monkeypatch, owner, name, room=3)
    capsys.readouterr()
    assert run_sample.main(flags(devkit, work) + only(step)) == 2
    err = error_line(capsys)
    assert disk.writes == 4  # it stopped at the first failed write
    assert err.startswith(f"error: no space left on the disk while writing into {work / folder} (")
    assert f" free there; stage I {step} still needed about " in err and " by estimate (7 images x " in err
    assert "free space on that disk, then rerun the same command" in err and "--resume" in err
    assert len(list((work / folder).iterdir())) == 3 and not temp_files(tmp_path)

    monkeypatch.setattr(owner, name, disk.real)  # space freed
    assert run_sample.main(flags(devkit, work) + only(step)) == 0
    assert f"{step}: 7 of 10 images to do" in capsys.readouterr().out
    assert sorted(p.name for p in (work / folder).iterdir()) == ref
    different = [n for n in ref if not same_file(work / folder / n, ref_work / folder / n, work, ref_work)]
    assert not different and not temp_files(tmp_path)


def parse_bytes(text):
    """The inverse of pyutils.format_bytes, to its one decimal."""
    number, unit = text.split()
    return float(number) * {"bytes": 1, "kB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30}[unit]


def test_estimate_warns_up_front_and_a_raw_enospc_says_what_was_left(base, tmp_path, monkeypatch, capsys):  # noqa: F811
    """With less free space than the CAMs will take, a warning before the first step names the step, its estimate
    and the free space; an ENOSPC OSError that a step raises outside atomic_path (cda.pool's folders, say) is the
    same one line, with what the step still needed. The estimate is within 5% of the real CAM files' bytes."""
    import step.make_cam
    devkit, work = copy_base(base, tmp_path / "w")
    (work / "result" / "cam").rename(tmp_path / "made")  # base's CAM files: make_cam's format and sizes
    real = sum(p.stat().st_size for p in (tmp_path / "made").iterdir())
    monkeypatch.setattr(pyutils, "free_bytes", lambda path: 10_000)

    def run(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(args.cam_out_dir, "2007_000000.npz"))
    monkeypatch.setattr(step.make_cam, "run", run)
    capsys.readouterr()
    assert run_sample.main(flags(devkit, work) + only("make_cam")) == 2
    out = capsys.readouterr()
    warning = [line for line in out.out.splitlines() if line.startswith("warning: not enough disk space")]
    assert len(warning) == 1, out.out
    head = "warning: not enough disk space, by estimate: stage I make_cam writes about "
    assert warning[0].startswith(head) and f" into {work / 'result' / 'cam'}, 9.8 kB free there; " in warning[0]
    estimate = warning[0][len(head):].split(" into ")[0]
    assert abs(parse_bytes(estimate) - real) < 0.05 * real, (estimate, real)

    err = [line for line in out.err.strip().splitlines() if line.startswith("error: ")]
    assert len(err) == 1, out.err
    assert err[0].startswith(f"error: no space left on the disk while writing into {work / 'result' / 'cam'} "
                             f"(9.8 kB free there; stage I make_cam still needed about {estimate} by estimate "
                             "(10 images x "), err
    assert "): free space on that disk, then rerun the same command" in err[0]


def test_raw_enospc_outside_the_steps_is_one_line(tiny_devkit, tmp_path, monkeypatch, capsys):
    """An ENOSPC without a file name, raised outside any step (here: by setup), names --work_dir."""
    def setup(args, argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(run_sample, "setup", setup)
    argv = flags(tiny_devkit, tmp_path / "w") + only()
    assert run_sample.main(argv) == 2
    assert error_line(capsys).startswith(f"error: no space left on the disk while writing into {tmp_path / 'w'} (")


def test_disk_full_error_pickles_whole(tmp_path):
    """A worker process's DiskFullError (the CRF steps' pool) arrives with its folder, for the driver's estimate."""
    import pickle
    err = pickle.loads(pickle.dumps(pyutils.disk_full_error(str(tmp_path), OSError(errno.EDQUOT, "quota"))))
    assert isinstance(err, pyutils.DiskFullError) and err.directory == str(tmp_path) and err.quota
    again = pyutils.as_disk_full(err, lambda: "stage I cam_to_crf still needed about 3.0 GB by estimate")
    assert str(again).startswith(f"disk quota exceeded while writing into {tmp_path} (")
    assert " free there; stage I cam_to_crf still needed about 3.0 GB by estimate): free space or raise the quota" \
        in str(again)
    assert pyutils.as_disk_full(ValueError("a bug")) is None


# ---------------------------------------------------------------- a real full disk (tmpfs)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs; skipped where mounting is not permitted (not root, or no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk, leave):
    """A filler file that leaves about `leave` bytes free on `disk`."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(pyutils.free_bytes(str(disk)) - leave, 0))
    return filler


def test_make_cam_on_a_full_tmpfs(base, tmp_path, small_disk, capsys):  # noqa: F811
    """make_cam writing its CAMs on a tmpfs that is all but full: one line, no temporary file; the filler
    removed, the same command finishes with the CAMs of an uninterrupted run."""
    ref_dk, ref_work = copy_base(base, tmp_path / "ref")
    (ref_work / "result" / "cam").rename(tmp_path / "ref_old")
    assert run_sample.main(flags(ref_dk, ref_work) + only("make_cam")) == 0
    ref = sorted(p.name for p in (ref_work / "result" / "cam").iterdir())
    sizes = sorted(os.path.getsize(ref_work / "result" / "cam" / n) for n in ref)

    devkit, work = copy_base(base, tmp_path / "full")
    cams = small_disk / "cam"
    argv = flags(devkit, work, "--cam_out_dir", str(cams)) + only("make_cam")
    filler = fill(small_disk, leave=sum(sizes[:3]))  # room for about three CAM files
    capsys.readouterr()
    assert run_sample.main(argv) == 2
    err = error_line(capsys)
    assert err.startswith(f"error: no space left on the disk while writing into {cams} ("), err
    done = len(list(cams.iterdir()))
    assert 0 < done < len(ref) and not temp_files(small_disk)

    filler.unlink()
    assert run_sample.main(argv) == 0
    assert f"make_cam: {len(ref) - done} of {len(ref)} images to do" in capsys.readouterr().out
    assert sorted(p.name for p in cams.iterdir()) == ref
    assert all(same_file(cams / n, ref_work / "result" / "cam" / n, small_disk, ref_work) for n in ref)


def test_weights_on_a_full_tmpfs(small_disk):
    """torch.save to a file name fails in C++ without an errno (the all-but-full disk tells), through a file
    object with ENOSPC: a UserError both ways, nothing left behind."""
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 512)  # 0.5 MB of weights
    filler = fill(small_disk, leave=100 * 1024)
    for save in (lambda p: training.save_weights(p, model), lambda p: pyutils.save_torch(p, model.state_dict())):
        with pytest.raises(pyutils.UserError, match=f"no space left on the disk while writing into {small_disk} "):
            save(str(small_disk / "w.pth"))
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    filler.unlink()
    pyutils.save_torch(str(small_disk / "w.pth"), model.state_dict())
    loaded = torch.load(small_disk / "w.pth", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
