"""Cohort training (:func:`apnb.engine.fit_cohort`, :func:`apnb.recipes.students`): one batch and one
teacher pass serve every member, and each member ends exactly as it would trained alone."""
import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from apnb.data import splits as D
from apnb import recipes as R
from apnb import models as M
from apnb.engine import StudentObjective, Member, TrainConfig, fit, fit_cohort, load_checkpoint
from apnb.store import Store
from apnb import specs
from apnb.matching import AttributionMatching

from conftest import tiny_data

pytestmark = pytest.mark.unit

KINDS = list(specs.KINDS)  # every matching kind, e2KD included
CFG = dict(epochs=3, lr=0.01, batch_size=16, schedule="onecycle", optimizer="adamw", seed=5)


def _teacher():
    return M.build({"arch": "vgg16_bn", "num_classes": 4, "width_div": 8, "n_pools": 2, "head_pool": 1}, seed=1).eval()


def _student(div=16):
    # the VOC head has Dropout: the student's step draws from the global RNG, as in the demo
    return M.build({"arch": "vgg16_bn", "num_classes": 4, "width_div": div, "n_pools": 2, "head_pool": 1}, seed=3)


def _obj(teacher, kind):
    return StudentObjective(teacher, AttributionMatching(kind=kind, beta=3.0, p=0.3))


def _equal(a, b):
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


@functools.lru_cache(maxsize=None)
def _alone(kind):
    """The student trained alone with ``kind``'s objective and CFG, trained once per process and shared by the
    tests that compare a cohort member or a resumed run with it."""
    m = _student()
    fit(m, _obj(_teacher(), kind), tiny_data(), TrainConfig(**CFG), progress=False)
    return m


def test_cohort_members_equal_their_runs_alone():
    teacher, data = _teacher(), tiny_data()
    alone = [_alone(k) for k in KINDS]
    members = [Member(_student(), _obj(teacher, k), TrainConfig(**CFG), name=k) for k in KINDS]
    res = fit_cohort(members, data, progress=False)
    for k, a, m, r in zip(KINDS, alone, members, res):
        assert _equal(a, m.model), f"{k}: the cohort member differs from its run alone"
        assert r.cohort == len(KINDS) and len(r.history) == CFG["epochs"]
        assert r.history[-1]["loss"] > 0


def test_one_teacher_pass_per_batch_and_need():
    """Naive, EWA, SWA and SSWA members share one teacher pass per batch (issue: nothing computed twice)."""
    teacher, data = _teacher(), tiny_data()
    calls = [0]
    teacher.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    members = [Member(_student(), _obj(teacher, k), TrainConfig(**dict(CFG, epochs=1)), name=k)
               for k in ["none", "swa", "sswa", "none"]]
    fit_cohort(members, data, progress=False)
    assert calls[0] == 3  # 3 batches, one pass each (swa and sswa need the same; naive reuses its logits)
    calls[0] = 0
    members = [Member(_student(), _obj(teacher, k), TrainConfig(**dict(CFG, epochs=1)), name=k)
               for k in ["none", "ewa", "swa"]]
    fit_cohort(members, data, progress=False)
    assert calls[0] == 3  # EWA reads the activations of SWA's pass, naive KD its logits: one pass per batch
    calls[0] = 0
    members = [Member(_student(), _obj(teacher, k), TrainConfig(**dict(CFG, epochs=1)), name=k)
               for k in ["none", "ewa"]]
    fit_cohort(members, data, progress=False)
    assert calls[0] == 3  # EWA's own pass (activations, no gradients) serves naive KD


def test_cohort_refuses_members_that_cannot_share_batches():
    teacher, data = _teacher(), tiny_data()
    with pytest.raises(ValueError, match="differ in \\(seed, batch_size, num_workers, precision\\)"):
        fit_cohort([Member(_student(), _obj(teacher, "none"), TrainConfig(**CFG)),
                    Member(_student(), _obj(teacher, "none"), TrainConfig(**dict(CFG, seed=6)))], data, progress=False)
    with pytest.raises(ValueError, match="draws different randomness per step.*own cohort"):
        fit_cohort([Member(_student(16), _obj(teacher, "none"), TrainConfig(**CFG), name="a"),
                    Member(_student(8), _obj(teacher, "none"), TrainConfig(**CFG), name="b")], data, progress=False)


def test_members_at_different_epochs_resume_to_the_same_networks(tmp_path):
    """A member whose checkpoint is ahead skips the epochs it has; a finished member's epochs are not rerun."""
    teacher, data = _teacher(), tiny_data()
    ck = [tmp_path / f"{k}.ckpt" for k in ("none", "sswa")]
    fit(_student(), _obj(teacher, "sswa"), data, TrainConfig(**CFG), ck[1], progress=False, stop_after_epoch=2)
    members = [Member(_student(), _obj(teacher, k), TrainConfig(**CFG), c, name=k) for k, c in zip(("none", "sswa"), ck)]
    res = fit_cohort(members, data, progress=False)
    assert [r.resumed_from for r in res] == [0, 2]
    for k, m in zip(("none", "sswa"), members):
        assert _equal(_alone(k), m.model), k


KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    from conftest import tiny_data
    from test_cohort import _teacher, _student, _obj, CFG
    from apnb.engine import Member, TrainConfig, fit_cohort
    from apnb.engine import StudentObjective
    teacher = _teacher()
    calls = [0]
    class Killer(StudentObjective):
        def __call__(self, model, x, y, cache=None):
            calls[0] += 1
            if calls[0] == 5:  # epoch 2, step 2 (3 steps per epoch)
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(model, x, y, cache)
    from apnb.matching import AttributionMatching
    members = [Member(_student(), _obj(teacher, "none"), TrainConfig(**CFG), {d!r} + "/none.ckpt", name="none"),
               Member(_student(), Killer(teacher, AttributionMatching(kind="sswa", beta=3.0, p=0.3)), TrainConfig(**CFG),
                      {d!r} + "/sswa.ckpt", name="sswa")]
    fit_cohort(members, tiny_data(), progress=False)
''')


@pytest.mark.slow
def test_sigkill_mid_epoch_and_resume_equals_uninterrupted_cohort(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(root=root, d=str(tmp_path))], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert [load_checkpoint(tmp_path / f"{k}.ckpt")["epoch"] for k in ("none", "sswa")] == [1, 1]
    teacher, data = _teacher(), tiny_data()
    kinds = ("none", "sswa")
    resumed = [Member(_student(), _obj(teacher, k), TrainConfig(**CFG), tmp_path / f"{k}.ckpt", name=k) for k in kinds]
    res = fit_cohort(resumed, data, progress=False)
    assert [r.resumed_from for r in res] == [1, 1]
    # the uninterrupted cohort's members are their runs alone (test_cohort_members_equal_their_runs_alone)
    for a in resumed:
        assert _equal(a.model, _alone(a.name)), a.name


def _setup(synth_root, store):
    """A Setup around an untrained teacher (key ``t``): what the recipes read, without training a teacher."""
    data = D.voc_data(str(synth_root), None, 32)
    spec = {"arch": "vgg16_bn", "num_classes": len(data["classes"]), "width_div": 16, "n_pools": 2, "head_pool": 1}
    return R.Setup(data, M.build(spec, seed=0).eval(), {"key": "t"}, spec=spec, image_size=32, store=store)


def test_students_train_in_cohorts_under_the_single_store_keys(tmp_path, synth_root):
    """students() groups by seed and architecture, gives the networks of one run alone under their keys, and
    loads what the store already has instead of training it."""
    S = _setup(synth_root, Store(tmp_path / "store"))
    train = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "onecycle", "batch_size": 8}
    kd = {"div": 2, "T": 4.0, "alpha": 0.9, "train": train}
    matching = {"layer": "last_conv", "p": 0.3, "beta": {"swa": 3.0}}
    (one, _), = R.students(dataclasses.replace(S, store=Store(tmp_path / "alone")), kd, matching, [("swa", 1)])
    runs = [(m, s) for s in (0, 1) for m in ("naive", "swa")]
    runs += [dataclasses.replace(R.job("naive", 0, train, matching), spec=S.spec)]  # a student as wide as the teacher
    out = R.students(S, kd, matching, runs)
    assert [info["cohort"] for _, info in out] == [2, 2, 2, 2, 1]  # (seed 0, /32), (seed 1, /32), (seed 0, /16)
    assert _equal(out[3][0], one)  # swa, seed 1: the same network as alone
    again = R.students(S, kd, matching, runs[:2])
    assert all(_equal(a, b[0]) for (a, _), b in zip(again, out[:2]))
    assert again[0][1]["cohort"] == 2  # loaded from the store with its training record, not retrained
    (single, _), = R.students(S, kd, matching, [("naive", 0)])
    assert _equal(single, out[0][0])
    store = S.store
    left = sorted(f.name for f in store.root.glob("*/*") if f.is_file())
    assert left and set(left) == {"cfg.json", "final.pt"}  # resume checkpoints go once final.pt is written


def test_a_cohort_holds_only_the_locks_of_what_it_trains(tmp_path, synth_root):
    """A cohort that mixes a stored network and a new one releases the stored one's lock once it is loaded: while
    the new one trains, exactly one entry of the store (its own) is locked, so another process that needs the
    finished network reads it without waiting for the cohort."""
    from filelock import FileLock, Timeout

    S = _setup(synth_root, Store(tmp_path / "store"))
    train = {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "onecycle", "batch_size": 8}
    kd = {"div": 2, "T": 4.0, "alpha": 0.9, "train": train}
    matching = {"layer": "last_conv", "p": 0.3, "beta": {"swa": 3.0}}
    R.students(S, kd, matching, [("naive", 0)])
    seen = []

    def held(model):
        locked = 0
        for f in sorted(S.store.root.glob("*.lock")):
            try:
                FileLock(str(f), timeout=0).acquire().lock.release()
            except Timeout:
                locked += 1
        seen.append(locked)
        return {}

    R.students(S, kd, matching, [("naive", 0), R.job("swa", 0, train, matching, eval_fn=held)])
    assert len(list(S.store.root.glob("*.lock"))) >= 2  # both entries were locked in turn
    assert seen == [1]  # the new student's lock alone, during its one epoch


def test_structured_cohort_equals_single_runs(tmp_path, synth_root):
    S = _setup(synth_root, Store(tmp_path / "a"))
    structured = {"rate": 0.5, "layers": None,
                  "finetune": {"epochs": 1, "lr": 0.01, "optimizer": "adamw", "schedule": "cosine", "batch_size": 8}}
    matching = {"layer": "last_conv", "p": 0.3, "beta": {"ewa": 3.0, "sswa": 3.0}}
    out = R.structured_nets(S, structured, matching, [(m, 2) for m in ("naive", "ewa", "sswa")])
    assert [info["cohort"] for _, info in out] == [3, 3, 3]
    assert out[0][1]["params_after"] < out[0][1]["params_before"]
    (one, info), = R.structured_nets(dataclasses.replace(S, store=Store(tmp_path / "b")), structured, matching,
                                     [("sswa", 2)])
    assert info["cohort"] == 1 and _equal(one, out[2][0])
