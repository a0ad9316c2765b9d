"""Pure-torch training: fine-tuning of an ImageClassifier and the tiny CLIP pre-training."""
