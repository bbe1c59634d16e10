"""Training the STP encoder: the paper's teacher-student-text framework (issue 18).

    trainset.py    training windows cut on the data path of `run` (search -> load -> preprocess), as Zarr
    objectives.py  vMF bottleneck, implicit decoders, shift-invariant L1, batch uniformity, consistency, CLIP
    views.py       held-out targets, the teacher's view and the student's perturbations
    engine.py      the training loop (one process or torchrun/DDP), checkpoints, resume, export
"""
