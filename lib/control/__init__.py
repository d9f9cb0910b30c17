"""The control core: systems and the one simulator, exact optima, the prompt and the parser, metrics and
datasets. Numpy, SciPy and the solvers only: no torch."""
