"""The network and what loads it: the U-Net (``unet``), losses (``losses``), model files whose bytes depend on the
model only (``keras_file``) and the one loader of a trained model (``trained``).
"""
