"""Numbers *reported by the paper* (Park et al., NeurIPS 2020), for display beside our measurements.

These are quotations, labelled as the paper's wherever they are shown; every number of our own comes
from a run of this code. The paper's ``l2`` column (e.g. 29.84) is not on the scale of supplement C.3's
formula for unit-normalised maps (at most 2 per sample); we compare its ranking, not its values.
"""
import pandas as pd

_T2 = """student,method,mAP,F1,AUC,point_acc
teacher,teacher,91.83,78.44,88.79,80.21
VGG16/2,naive,83.75,65.92,82.53,72.01
VGG16/2,ewa,86.48,68.19,85.05,80.42
VGG16/2,swa,86.56,67.78,88.12,80.66
VGG16/2,sswa,86.42,67.94,88.89,81.13
VGG16/4,naive,81.31,62.50,80.61,68.86
VGG16/4,ewa,82.46,63.57,84.18,79.34
VGG16/4,swa,83.67,65.14,87.90,80.05
VGG16/4,sswa,84.47,66.13,88.10,80.26
VGG16/8,naive,76.91,52.51,78.74,67.26
VGG16/8,ewa,79.56,58.91,81.99,78.49
VGG16/8,swa,80.14,60.70,87.88,79.59
VGG16/8,sswa,80.86,61.43,88.06,79.12
"""
_T3 = """student,method,cos,l2
VGG16/2,naive,0.705,29.84
VGG16/2,ewa,0.788,21.21
VGG16/2,swa,0.873,12.98
VGG16/2,sswa,0.859,14.36
VGG16/4,naive,0.650,35.52
VGG16/4,ewa,0.750,25.24
VGG16/4,swa,0.841,16.23
VGG16/4,sswa,0.837,16.63
VGG16/8,naive,0.563,44.10
VGG16/8,ewa,0.652,34.90
VGG16/8,swa,0.813,19.04
VGG16/8,sswa,0.842,19.49
"""
_T4_T5 = """method,mAP,F1,AUC,point_acc,cos,l2
teacher,91.83,78.44,88.79,80.21,,
naive,87.42,70.24,84.13,75.43,0.790,21.21
ewa,89.75,74.83,86.67,79.37,0.895,10.71
swa,89.79,75.11,88.22,79.86,0.913,8.407
sswa,89.96,75.51,88.45,79.25,0.920,7.826
"""
_T6_T7 = """method,mAP,F1,AUC,point_acc,cos,l2
teacher,91.83,78.44,88.79,80.21,,
naive,83.76,60.71,79.98,75.29,0.764,30.04
ewa,87.62,66.05,83.96,78.84,0.855,14.74
swa,88.39,67.70,86.99,81.65,0.911,9.102
sswa,89.07,68.28,88.34,81.08,0.910,9.232
"""


def _read(s):
    import io

    return pd.read_csv(io.StringIO(s))


def difference(table: pd.DataFrame, metric: str, a: dict, b: dict) -> float:
    """The paper's ``b - a`` for one metric of one of its tables, the rows picked by column values (e.g.
    ``difference(table6_7(), "AUC", {"method": "teacher"}, {"method": "naive"})`` = -8.81): the numbers that
    the verdict lines quote come from here, not from the notebooks."""
    def one(sel):
        rows = table.loc[(table[list(sel)] == pd.Series(sel)).all(axis=1), metric]
        if len(rows) != 1:
            raise KeyError(f"{sel} picks {len(rows)} rows of the paper's table, not one")
        return float(rows.iloc[0])

    return one(b) - one(a)


def table2():
    """Paper Table 2: KD students on PASCAL VOC 2012 (mAP, F1, AUC, point accuracy; %)."""
    return _read(_T2)


def table3():
    """Paper Table 3: teacher-student cosine and l2 of the KD students."""
    return _read(_T3)


def table4_5():
    """Paper Tables 4-5: iterative unstructured pruning to 97 % (last network)."""
    return _read(_T4_T5)


def table6_7():
    """Paper Tables 6-7: l1-structured pruning (rho_c = 0.7)."""
    return _read(_T6_T7)

_T8 = """method,network,AUC,point_acc
gradcam,teacher,88.79,80.21
gradcam,naive,78.74,67.26
gradcam,sswa,88.06,79.12
ebp,teacher,84.14,74.80
ebp,naive,76.31,66.31
ebp,sswa,82.31,71.24
lrp,teacher,85.29,65.48
lrp,naive,79.60,53.43
lrp,sswa,82.46,64.08
rap,teacher,84.54,69.49
rap,naive,80.85,56.87
rap,sswa,83.53,65.66
"""
_T9_10 = """network,params_M,gradcam_AUC,ebp_AUC,lrp_AUC,rap_AUC,gradcam_point,ebp_point,lrp_point,rap_point
teacher,15.22,88.79,84.14,85.29,84.54,80.21,74.80,65.48,69.49
kd,0.29,78.74,76.31,79.60,80.85,67.26,66.31,53.43,56.87
structured,3.27,79.98,79.03,81.60,79.30,75.29,69.22,61.13,65.01
unstructured,0.53,84.72,81.99,81.55,81.16,75.43,70.28,60.23,65.26
"""


def table8():
    """Paper Table 8: KD VGG16/8, teacher vs naive vs SSWA under four attribution methods (AUC / point, %)."""
    return _read(_T8)


def table9_10():
    """Supplement Tables 1-2 (cited as 9-10 here): four attribution methods across the compression methods.

    Note: the supplement's unstructured Grad-CAM AUC (84.72) differs from main Table 4 (84.13)."""
    return _read(_T9_10)

_T11 = """rate,method,top1,AUC,point_acc,cos,l2_1e5
0.0,full,73.37,81.64,91.90,,
0.6,naive,73.31,76.01,91.21,0.975,1.614
0.6,ewa,73.33,76.52,91.63,0.977,1.603
0.6,swa,73.36,79.82,91.67,0.980,1.26
0.6,sswa,73.32,80.88,91.78,0.981,1.206
0.9,naive,70.38,75.43,90.39,0.925,4.80
0.9,ewa,70.52,75.68,90.75,0.919,5.18
0.9,swa,70.48,79.85,91.35,0.939,3.88
0.9,sswa,70.46,80.63,90.93,0.939,3.87
"""
_T12 = """method,top1,AUC,point_acc,cos,l2_1e5
naive,70.06,81.20,83.96,0.982,2.248
swa,70.102,84.70,88.33,0.988,1.550
sswa,70.486,84.65,88.51,0.988,1.521
"""


def table11():
    """Supplement Table 3 (cited as Table 11): one-shot unstructured pruning of the ImageNet VGG16, top-1
    prediction's Grad-CAM map scored on the 4276 segmented images; l2 in units of 1e-5. As printed, the
    full network's row sits in the 60 % block (the 60 % naive row starts at 73.31)."""
    return _read(_T11)


def table12():
    """Supplement Table 4 (cited as Table 12): l1-structured pruning of ResNet34 on ImageNet, rho_c = 0.1,
    20 fine-tuning epochs; l2 in units of 1e-5. The supplement prints no full-network row for this table."""
    return _read(_T12)
