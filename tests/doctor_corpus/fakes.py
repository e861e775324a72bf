"""Stand-ins for third-party types the test environment does not install.

The doctor recognises these by their type's module (``h5py._hl.files``, ``lmdb``, ``cv2``,
``tokenizers``), as it would the real ones; their ``__module__`` is set accordingly. Like the
real handles they cannot be pickled (pickle cannot import their module).
"""

from __future__ import annotations

from typing import Any


class H5File:
    """Like ``h5py.File``: an open HDF5 file (truthy while open)."""

    def __init__(self, path: str) -> None:
        self.filename = path
        self._open = True

    def __bool__(self) -> bool:
        return self._open

    def __getitem__(self, key: str) -> list[int]:
        return [0, 1, 2, 3]


H5File.__module__ = "h5py._hl.files"
H5File.__qualname__ = H5File.__name__ = "File"


class LmdbEnvironment:
    """Like ``lmdb.Environment``."""

    def __init__(self, path: str) -> None:
        self.path = path


LmdbEnvironment.__module__ = "lmdb"
LmdbEnvironment.__qualname__ = LmdbEnvironment.__name__ = "Environment"


class CvClahe:
    """Like ``cv2.CLAHE`` (an OpenCV algorithm object)."""

    def apply(self, x: Any) -> Any:
        return x


CvClahe.__module__ = "cv2"
CvClahe.__qualname__ = CvClahe.__name__ = "CLAHE"


class RustTokenizer:
    """Like ``tokenizers.Tokenizer`` (the Rust core of a Hugging Face fast tokenizer)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


RustTokenizer.__module__ = "tokenizers"
RustTokenizer.__qualname__ = RustTokenizer.__name__ = "Tokenizer"


class FastTokenizer:
    """Like ``transformers.PreTrainedTokenizerFast``: a Python wrapper around ``_tokenizer``."""

    def __init__(self) -> None:
        self._tokenizer = RustTokenizer()

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)


class FakeCudaTensor:
    """A tensor-like that reports living on a CUDA device (this machine has no GPU)."""

    is_cuda = True

    class _Device:
        type = "cuda"
        index = 0

    device = _Device()

    def __init__(self, values: list[float]) -> None:
        self.values = values
