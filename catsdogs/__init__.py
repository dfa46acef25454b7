"""catsdogs: turn a folder of cat and dog photos into a trained Keras classifier.

Importing this package is cheap: Keras and TensorFlow are imported only by the functions that
need them (see ``catsdogs.backend``).
"""

__version__ = "0.1.0"
