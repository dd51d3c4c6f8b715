"""Which int8 engine computes what the fake-quant network computes? (the choice of ``apnb.quantization.ENGINE``)

For each quantized engine of this torch build, the demo teacher is quantized at 8 bits by PTQ and by one
epoch of QAT (the 22_quantization demo recipe, in a temporary store), converted to that engine's int8
kernels, and compared with its fake-quant network on the validation images: top-1 agreement and the
largest logit difference as a fraction of the logit range. Trains the demo teacher first if the store lacks it.

    python benchmarks/check_qengines.py
"""
import torch
from apnb.data import splits as D
from apnb import recipes as R
from apnb import quantization as Q
from apnb.engine import StudentObjective, TrainConfig, fit

SYNTH = {"classes": 6, "n_train": 1500, "n_val": 400, "n_seg": 400, "n_pretrain": 3000, "size": 64, "seed": 0,
         "context_bias": 0.8, "fragment_prob": 0.15}
TEACHER = {"arch": "vgg16_bn", "width_div": 4, "n_pools": 3, "head_pool": 1}
PRE = {"epochs": 12, "lr": 0.002, "optimizer": "adamw", "schedule": "onecycle", "batch_size": 32, "weight_decay": 0.0005, "seed": 0}
TRAIN = {"epochs": 6, "lr": 0.001, "optimizer": "adamw", "schedule": "onecycle", "batch_size": 32, "weight_decay": 0.0005, "seed": 0}
QAT = {"epochs": 1, "lr": 0.0001, "optimizer": "adamw", "schedule": "cosine", "batch_size": 32, "weight_decay": 0.0001, "seed": 0}


def main():
    S = R.setup({"root": "build/data/synth-voc", "synth": SYNTH, "image_size": 64},
                {"spec": TEACHER, "pretrain": PRE, "train": TRAIN}, "cpu", evaluate=False)
    data, teacher = S.data, S.teacher
    x, _ = D.tensors(data["val"])
    x_cal, _ = D.train_images(data, 256, 0)
    print(f"{'engine':8s} {'recipe':5s} {'top-1 agreement':>16s} {'max |logit diff| / range':>26s}")
    for engine in ("onednn", "qnnpack", "x86", "fbgemm"):
        if engine not in Q._SUPPORTED:
            continue
        ptq = Q.calibrate(Q.prepare(teacher, x_cal[:64], 8, "ptq", engine), x_cal)
        qat = Q.prepare(teacher, x_cal[:64], 8, "qat", engine)
        fit(qat, StudentObjective(teacher.eval(), R.Job("naive", 0, QAT).matching(), kd=False), data["train"], TrainConfig(**QAT),
            device="cpu", progress=False)
        Q.freeze(qat.cpu())
        for name, q in (("PTQ", ptq), ("QAT", qat)):
            a = Q.agreement(q, Q.to_int8(q), x)
            print(f"{engine:8s} {name:5s} {a['top1']:16.3f} {a['rel'] * 100:25.2f}%")


if __name__ == "__main__":
    main()
