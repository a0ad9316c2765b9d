"""`raysoup bench`: side-by-side benchmarks of the reduction, greedy soup, evaluation and sweep.

Every figure is a ratio of two contenders measured in the same run on the same machine, so it
says something even on a noisy shared machine; absolute seconds are reported next to it.
"""
