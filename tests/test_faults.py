"""Faults during replay and gen-trace (issue 7, part 2): signals mid-run, unwritable output,
disk full. Every case: a non-zero exit code, one line on stderr, no traceback, and nothing
half-written (no output under the final name, no ``.e3fast-tmp-*`` / ``.e3fast-old-*`` left).

The signal tests run the real ``python -m e3fast.cli`` and signal it only once the work is
under way: for replay, once the trace file is open (``/proc/PID/fd``; the replay then runs
for seconds with ``--block-rows 1000``); for gen-trace, once its temporary file exists.
"""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from e3fast.cli import main
from e3fast.tracefile.generator import GenTraceOptions, generate_trace

linux_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".e3fast-"))


def one_line_error(err: str):
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "big.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=4_000_000, devices=8, seed=2,
                                   out=str(path)), progress=False)
    return path


def _wait_for(cond, proc, timeout=90.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "e3fast.cli", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt(proc, sig, started, what, settle_s):
    """Wait until `started()`, let the work run `settle_s` more, send `sig`; the command
    must then end with exit 130 and one 'interrupted' line (SIGTERM is handled like Ctrl-C),
    after a notice if the signal came during a compilation (tests/test_interrupts.py)."""
    try:
        assert _wait_for(started, proc), f"{what} never got going: " + proc.communicate()[1]
        time.sleep(settle_s)
        assert proc.poll() is None, f"{what} finished before the signal: make the work bigger"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    notice = "interrupt received; stopping after the current compilation step"  # cold cache
    assert "interrupted" in one_line_error("\n".join(x for x in err.splitlines() if notice not in x))


@linux_proc
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_replay(big_trace, tmp_path, sig):
    out = tmp_path / "run"
    proc = _start(["replay", big_trace, "--out", out, "--policy", "e3", "--quiet",
                   "--block-rows", "1000"], tmp_path)
    _interrupt(proc, sig, lambda: _has_open(proc.pid, big_trace.resolve()), "replay", 0.3)
    assert not out.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_gen_trace(tmp_path, sig):
    out = tmp_path / "big.h5"
    proc = _start(["gen-trace", "--scenario", "drift", "--requests", 5_000_000, "--seed", 4,
                   "--out", out], tmp_path)
    _interrupt(proc, sig, lambda: leftovers(tmp_path), "gen-trace", 0.2)
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def run_main(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults-small") / "small.h5"
    generate_trace(GenTraceOptions(scenario="churn", requests=20_000, devices=4, seed=3,
                                   out=str(path)), progress=False)
    return path


def test_unwritable_output_under_a_regular_file(small_trace, tmp_path, capsys):
    """A parent that is a file cannot hold a folder (works as root, unlike chmod)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    rc, err = run_main(["replay", small_trace, "--out", blocker / "run", "--quiet"], capsys)
    assert rc == 2 and str(blocker) in one_line_error(err)
    rc, err = run_main(["gen-trace", "--out", blocker / "t.h5", "--requests", 100], capsys)
    assert rc == 2 and str(blocker) in one_line_error(err)
    assert blocker.read_text() == "x" and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_output_folder_permissions(small_trace, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, err = run_main(["replay", small_trace, "--out", ro / "run", "--quiet"], capsys)
        assert rc == 2 and "permission" in one_line_error(err).lower()
        rc, err = run_main(["gen-trace", "--out", ro / "t.h5", "--requests", 100], capsys)
        assert rc == 2 and str(ro) in one_line_error(err)
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_replay_results(small_trace, tmp_path, capsys, monkeypatch):
    """ENOSPC injected when the results are written (after the replay): one clear line, the
    temporary folder removed, nothing under --out."""
    real_file = h5py.File

    def full_disk_file(name, mode="r", *args, **kwargs):
        if mode != "r":
            raise ENOSPC
        return real_file(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", full_disk_file)
    rc, err = run_main(["replay", small_trace, "--out", tmp_path / "run", "--quiet"], capsys)
    msg = one_line_error(err)
    assert rc == 2 and "No space left on device" in msg and "disk space" in msg
    assert not (tmp_path / "run").exists() and leftovers(tmp_path) == []


def test_disk_full_while_writing_a_trace(tmp_path, capsys, monkeypatch):
    """ENOSPC injected on the second block gen-trace writes: the temporary file is deleted."""
    real_write = h5py.Dataset.write_direct
    calls = {"n": 0}

    def fill_up(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # one block = 6 columns
            raise ENOSPC
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "write_direct", fill_up)
    from e3fast.tracefile import generator
    with pytest.raises(Exception) as info:
        generator.generate_trace(GenTraceOptions(scenario="drift", requests=50_000,
                                                 out=str(tmp_path / "t.h5")),
                                 block_rows=10_000, progress=False)
    assert "No space left on device" in str(info.value)
    assert type(info.value).__name__ == "E3Error"
    assert calls["n"] > 6
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 256 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _run_cli(args, cwd):
    p = subprocess.run([sys.executable, "-m", "e3fast.cli", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def _check_disk_full(rc, err, folder, what):
    """A full disk: exit 2, one line naming the problem, nothing left behind."""
    assert rc == 2, (what, rc, err)
    assert list(folder.iterdir()) == [], "half-written output left on the full disk"
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "No space left on device" in lines[0] or "errno = 28" in lines[0]


def test_real_disk_full_gen_trace(tiny_tmpfs, tmp_path):
    """gen-trace of 100k requests (2.8 MB) into a 256 KiB tmpfs (real process)."""
    rc, err = _run_cli(["gen-trace", "--out", tiny_tmpfs / "t.h5", "--requests", 100_000], tmp_path)
    _check_disk_full(rc, err, tiny_tmpfs, "gen-trace (tracefile/writer.py TraceWriter.close)")


def test_real_disk_full_replay(small_trace, tiny_tmpfs, tmp_path):
    """replay --per-request (about 1 MB of results) into a 256 KiB tmpfs (real process)."""
    rc, err = _run_cli(["replay", small_trace, "--out", tiny_tmpfs / "run", "--quiet",
                        "--per-request", "--policy", "sect"], tmp_path)
    _check_disk_full(rc, err, tiny_tmpfs, "replay (runner.write_outputs)")
