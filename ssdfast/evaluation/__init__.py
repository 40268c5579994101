"""Evaluation: the loop shared by tools/eval.py and training, and the COCO and VOC metrics."""
