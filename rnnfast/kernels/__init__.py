"""Triton kernels, one file per op: ``recurrence`` (RNN/GRU/LSTM time loop, forward and backward) and
``tree_lstm`` (tree-LSTM composition and the fused SPINN reduce).

Importing this package imports ``triton``; the op modules in ``rnnfast/ops/*/triton.py`` import it only
when a kernel runs, so ``supports()`` answers on machines without Triton.
"""
