"""Offline trainer: point-annotated datasets, CLIP-EBC preprocessing, the DACE loss and the loop.

``crowdstream train CONFIG.yaml`` turns annotated images or video frames into a checkpoint;
``crowdstream eval`` measures any checkpoint or engine on a dataset. See ``engines.train.trainer``.
``engines.train.adapt`` fine-tunes a model for one camera (``crowdstream adapt``) from the frames
in its labels file (``engines.train.sitelabels``, filled by ``engines.train.labelimport``) and
unlabeled footage.
"""
