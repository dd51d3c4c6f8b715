"""Training-step time of naive KD, EWA, SWA and SSWA, and SSWA against the straightforward implementation.

Teacher VGG16_bn, student VGG16/4 (every width / 4), one batch, measured side by side in one run.
"straightforward" is the authors' approach: ``out.backward(grad, create_graph=True)`` through the whole
student (and a full backward through the teacher) with hooks catching the activation gradients.
Targets (issue): SSWA step <= 1.2x the naive KD step; >= 1.5x faster than straightforward.

    python benchmarks/bench_matching.py [--size 112 --batch 8 --reps 3 --device auto]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from apnb import models as M
from apnb.compression import kd_multilabel
from apnb.config import resolve_device
from apnb.engine import StudentObjective
from apnb.matching import AttributionMatching, squared_normalized_l2


def straightforward_sswa_loss(student, teacher, x, y, p=0.3, beta=50.0):
    """The authors' way: full backward passes with create_graph through the student."""
    caught = {}

    def tap(net, key):
        layer = M.get_module(net, "last_conv")

        def hook(m, i, o):
            caught[key + "_a"] = o
            o.register_hook(lambda g: caught.__setitem__(key + "_g", g))
        return layer.register_forward_hook(hook)

    h1, h2 = tap(teacher, "t"), tap(student, "s")
    try:
        t_out = teacher(x)
        onehot = F.one_hot(t_out.argmax(1), t_out.shape[1]).float()
        t_out.backward(onehot, retain_graph=True)  # full backward through the teacher, parameters included
        a_t, g_t = caught["t_a"].detach(), caught["t_g"].detach()
        s_out = student(x)
        s_out.backward(onehot, create_graph=True)  # full backward through the student, with a graph
        a_s, g_s = caught["s_a"], caught["s_g"]
    finally:
        h1.remove(), h2.remove()
    keep = (torch.rand(g_t.shape[:2], device=x.device) >= p).float()
    m_t = F.relu(((g_t.mean((2, 3)) * keep)[:, :, None, None] * a_t).sum(1))
    m_s = F.relu((g_s.mean((2, 3))[:, :, None, None] * a_s).sum(1))
    loss = kd_multilabel(s_out, t_out.detach(), y) + beta * squared_normalized_l2(m_s, m_t)
    for net in (teacher, student):
        net.zero_grad(set_to_none=True)
    return loss


def timed(fn, reps, device):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t) / reps, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    teacher = M.vgg("vgg16_bn", 20).to(dev).eval()
    student = M.vgg("vgg16_bn", 20, width_div=4).to(dev).train()
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = (torch.rand(a.batch, 20, device=dev) > 0.8).float()
    opt = torch.optim.SGD(student.parameters(), lr=1e-4)
    res = {}
    for kind in ["none", "ewa", "swa", "sswa"]:
        obj = StudentObjective(teacher, AttributionMatching(kind=kind))

        def step():
            loss, _ = obj(student, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        res[kind] = timed(step, a.reps, dev)

    def straight():
        loss = straightforward_sswa_loss(student, teacher, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    res["straightforward_sswa"] = timed(straight, a.reps, dev)
    print(f"device={dev} size={a.size} batch={a.batch} reps={a.reps}")
    print(f"{'step':24s} {'s/step':>8s} {'x naive KD':>10s} {'peak MiB':>9s}")
    for k, (t, mem) in res.items():
        print(f"{('naive KD' if k == 'none' else k):24s} {t:8.3f} {t / res['none'][0]:10.2f} {mem:9.0f}")
    ratio = res["straightforward_sswa"][0] / res["sswa"][0]
    print(f"SSWA / naive KD = {res['sswa'][0] / res['none'][0]:.2f} (target <= 1.2); "
          f"straightforward / ours = {ratio:.2f} (target >= 1.5)")


if __name__ == "__main__":
    main()
