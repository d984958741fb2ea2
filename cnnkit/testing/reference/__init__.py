"""Naive, loop-based reference kernels: the textbook formulas written as plainly as possible.

They are slow on purpose. Tests hold the fast kernels equal to them, and users can read them to
see what a layer computes. One module per family: ``conv``, ``pool``, ``norm``, ...
"""
