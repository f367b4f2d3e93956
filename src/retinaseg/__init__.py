"""Retinal-lesion segmentation on DIARETDB1: data, U-Net, losses, metrics and tracking.

Stage scripts in ``stages/`` are thin wrappers around this package, so every piece
of logic can be imported and tested without DVC.
"""
