"""The paper's analysis of why soups work, as pure math (no Ray): the geometry of the
fine-tuned updates (`geometry`), the error landscape's grid (`landscape`), soups against logit
ensembles from flatness and confidence (`ensembles`), correlations with intervals (`stats`),
the zero-shot transfer task (`transfer`), the analysis journal (`journal`) and the figures
(`figures`). `raysoup analyze` fans the evaluations out over the eval actors
(orchestration/analysis.py); docs/analysis.md says what each figure shows."""
