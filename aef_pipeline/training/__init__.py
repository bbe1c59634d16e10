"""Training the STP encoder: the paper's teacher-student-text framework (docs/training.md).

Modules, one job each:
- trainset.py, trainset_read.py: training windows cut on the data path of `run`, stored as Zarr
- objectives.py: vMF bottleneck, implicit decoder, shift-invariant L1, batch uniformity, consistency, CLIP
- views.py: held-out targets, the teacher's view and the student's perturbations
- text.py: text vectors at points and times, matched to training windows (optional)
- engine.py: the training loop, one process or torchrun (DDP)
- checkpoints.py, logbook.py, export.py: atomic checkpoints, the per-step log and curves, model.toml
- distributed.py: ranks, devices and the few collectives the loop needs
- quality.py: field-quality figures of an encoder (neighbours, lattice, teacher-student)
"""
