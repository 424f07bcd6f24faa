"""e3fast gen-corpus: manifest, incremental re-runs, bad specs."""
import json
import subprocess
import sys

import pytest

from e3fast.cli import main

SPEC = """
out = "{out}"
[defaults]
devices = 4
[grid]
scenario = ["cold-start", "drift"]
seed = [0, 1]
requests = 1500
[[entry]]
name = "sem"
scenario = "semantic"
requests = 2000
sem_factor = 6.0
"""


def _spec(tmp_path, text=SPEC):
    p = tmp_path / "corpus.toml"
    p.write_text(text.format(out=tmp_path / "c"))
    return p


def _manifest(tmp_path):
    return {e["path"]: e for e in json.loads((tmp_path / "c" / "manifest.json").read_text())["entries"]}


def _mtimes(tmp_path):
    return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("*.h5")}


def test_manifest_and_incremental_reruns(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(["gen-corpus", str(spec), "--workers", "2"]) == 0
    man = _manifest(tmp_path)
    assert len(man) == 5 and "sem.h5" in man
    e = man["sem.h5"]
    assert e["n_requests"] == 2000 and e["params"]["sem_factor"] == 6.0 and len(e["sha256"]) == 64
    from e3fast.corpus import sha256_file
    assert all(sha256_file(tmp_path / "c" / p) == r["sha256"] for p, r in man.items())
    before = _mtimes(tmp_path)
    capsys.readouterr()
    # a re-run regenerates nothing
    assert main(["gen-corpus", str(spec)]) == 0
    assert "0 traces generated, 5 up to date" in capsys.readouterr().out
    assert _mtimes(tmp_path) == before
    # changing one entry regenerates only it
    spec.write_text(spec.read_text().replace("sem_factor = 6.0", "sem_factor = 5.0"))
    assert main(["gen-corpus", str(spec)]) == 0
    after = _mtimes(tmp_path)
    assert [n for n in after if after[n] != before[n]] == ["sem.h5"]
    assert _manifest(tmp_path)["sem.h5"]["params"]["sem_factor"] == 5.0
    # a damaged file fails its checksum and is regenerated, identical to before
    victim = next((tmp_path / "c").glob("drift_*_s1_*.h5"))
    good = victim.read_bytes()
    victim.write_bytes(good[:-10] + b"0123456789")
    assert main(["gen-corpus", str(spec)]) == 0
    assert "1 traces generated" in capsys.readouterr().out.splitlines()[-1]
    assert victim.read_bytes() == good


@pytest.mark.parametrize("text, word", [
    ("[grid]\nutilisation = [0.5]\n", "utilisation"),
    ("[grid]\nscenario = ['drift']\nrequests = 'many'\n", "requests"),
    ("[grid]\nscenario = ['nope']\n", "scenario"),
    ("[grid]\nscenario = ['drift']\nutilization = [-1.0]\n", "utilization"),
    ("bogus = 1\n", "bogus"),
    ("[grid]\nscenario = ['drift']\n[[entry]]\nscenario = 'drift'\n", "same trace"),
    ("[grid\n", "TOML"),
    ("", "no traces"),
])
def test_bad_spec_names_the_key(tmp_path, text, word):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = subprocess.run([sys.executable, "-m", "e3fast.cli", "gen-corpus", str(p), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert word in r.stderr and "bad.toml" in r.stderr
    assert not (tmp_path / "o").exists()


def test_interrupt_keeps_finished_traces_and_rerun_completes(tmp_path):
    import signal
    import time
    spec = tmp_path / "big.toml"
    spec.write_text("[grid]\nscenario = ['cold-start', 'drift']\nseed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
                    "requests = 20000\n")
    out = tmp_path / "c"
    p = subprocess.Popen([sys.executable, "-m", "e3fast.cli", "gen-corpus", str(spec), "--out", str(out),
                          "--workers", "1", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*.h5"))) < 2:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err
    done = {e["path"] for e in json.loads((out / "manifest.json").read_text())["entries"]}
    assert 2 <= len(done) < 20 and done <= {f.name for f in out.glob("*.h5")}
    assert not list(out.glob(".e3fast-tmp-*"))
    assert main(["gen-corpus", str(spec), "--out", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "manifest.json").read_text())["entries"]) == 20
