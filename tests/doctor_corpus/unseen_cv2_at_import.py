"""A dataset module that turns OpenCV's threads off at import (pytorch/pytorch#1838: put
``cv2.setNumThreads(0)`` at the top of the module): every worker runs it, spawn workers when
unpickling the dataset imports this module, forked ones by inheriting it.

Importing this module changes OpenCV's thread count for the whole process: the corpus case
imports it in its build function and restores the count when the case is done.
"""

from __future__ import annotations

import cv2

from tests.doctor_corpus.unseen_datasets import ImageDataset

cv2.setNumThreads(0)


class ThreadsOffImageDataset(ImageDataset):
    """hloc's ImageDataset (``cv2.imread`` + ``cv2.resize``), defined where OpenCV's threads
    are turned off at import."""
