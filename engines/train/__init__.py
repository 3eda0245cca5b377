"""Offline trainer: point-annotated datasets, CLIP-EBC preprocessing, the DACE loss and the loop.

``crowdstream train CONFIG.yaml`` turns annotated images or video frames into a checkpoint;
``crowdstream eval`` measures any checkpoint or engine on a dataset. See ``engines.train.trainer``.
"""
