"""Triton kernels, one file per op: ``recurrence`` (RNN/GRU/LSTM time loop, forward and backward) and
``tree_lstm`` (tree-LSTM composition and the fused SPINN reduce); ``launch`` holds what the launchers in
``rnnfast/ops/*/triton.py`` share.

The kernel modules import ``triton``; this package and ``launch`` do not, and the launchers import a
kernel module only when a kernel runs, so ``supports()`` answers on machines without Triton.
"""
