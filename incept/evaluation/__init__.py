"""Evaluation of checkpoints: metrics over a validation split and the open-set
("not one of my classes") score that the exported model carries."""
