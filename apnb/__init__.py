"""apnb: Attribution Preservation in Network Compression, as an executable book.

Reproduces Park et al., "Attribution Preservation in Network Compression for Reliable Network
Interpretation" (NeurIPS 2020). Modules:

- :mod:`apnb.config`       device resolution, paths, atomic writes, the store's configuration key
- :mod:`apnb.data`         synthetic VOC-format benchmark and the real VOC / ImageNet-seg / CIFAR loaders;
                           :mod:`apnb.data.splits` assembles the splits a notebook works on
- :mod:`apnb.models`       VGG16_bn (paper head), width-divided students, VGG-11, ResNet34
- :mod:`apnb.gradcam`      differentiable Grad-CAM at a named layer
- :mod:`apnb.matching`     the EWA / SWA / SSWA regularizers (paper Eq. 1-6)
- :mod:`apnb.compression`  distillation losses, unstructured and l1-structured pruning
- :mod:`apnb.engine`       one ``fit`` with atomic checkpoints, resume, NaN guard, DDP, cohorts
- :mod:`apnb.recipes`      the training recipes: teacher, distillation, pruning, quantization (Eq. 2), each
                           stored and guarded, the setup every VOC notebook starts from (benchmark and
                           teacher_recipe), and the profiles' recipe mappings (matching, kd, structured,
                           unstructured) turned into those networks
- :mod:`apnb.store`        the checkpoint store: finished networks under a hash of their recipe, one lock each
- :mod:`apnb.metrics`      mAP, F1, ROC-AUC, pointing game, teacher-student cosine / l2
- :mod:`apnb.attribution`  one ``attribute()`` API over Grad-CAM, EBP, LRP, RAP, saliency, InputGrad, IG, EG, AGI,
                           LPI and occlusion (``attribute_batches`` for many images)
- :mod:`apnb.faithfulness` ROAR, DiffROAR, DiffID
- :mod:`apnb.retraining`   the retraining benchmarks: ROAR (Figure 7) and DiffROAR, classifiers trained and scored
- :mod:`apnb.evaluate`     the paper's evaluation of one network (prediction, localization, similarity): a table row,
                           with the shortcut, quantized and fidelity variants the further chapters report
- :mod:`apnb.report`       seeds: mean and 95 % intervals, paired tests, structured verdicts, tables beside the
                           paper's
- :mod:`apnb.plots`        the figures the chapters share (seed means with intervals beside the teacher's value)
- :mod:`apnb.paper`        the paper's reported numbers (quotations, labelled as such wherever shown)
- :mod:`apnb.records`      run records written beside each executed notebook
- :mod:`apnb.runner`       papermill execution with profiles and change detection
- :mod:`apnb.course`       the course: exercises to student notebooks with otter-grader checks, grading
"""

__version__ = "0.1.0"
