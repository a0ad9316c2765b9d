"""raysoup's benchmark harness: side-by-side benchmarks of the reduction, greedy soup,
evaluation, sweep and input pipeline. Run from a checkout: `python -m bench --help`.

Every figure is a ratio of two contenders measured in the same run on the same machine, so it
says something even on a noisy shared machine; absolute seconds are reported next to it. The
harness is not part of the installed package: it times raysoup against stand-ins of the
paper's code, which a user of raysoup does not need.
"""
