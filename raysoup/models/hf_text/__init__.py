"""Hugging Face text classification (`model.family: hf_text`): any encoder transformers'
`AutoModelForSequenceClassification` builds (BERT, RoBERTa, DeBERTa, ModernBERT, ...).

transformers is imported only inside this package (and only when a text model is built), so
the image path never pays for it. docs/text-models.md is the user's page.
"""
