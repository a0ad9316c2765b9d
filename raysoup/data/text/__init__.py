"""Text splits: labelled sentences (or sentence pairs) read from Parquet, JSON lines or CSV, the
generated text task of the text miniature, and the token cache (tokenised once per split).

The text counterpart of the image data plane beside it (`raysoup.data`): a split is a
`LabeledTexts` with the same keys / labels / class-projection interface as `LabeledImages`, so
the held-out carving, relabelling into train's classes and lineage records work unchanged.
"""

from raysoup.data.text.texts import LabeledTexts

__all__ = ["LabeledTexts"]
