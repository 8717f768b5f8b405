"""Exceptions for user mistakes: the CLI turns each into a one-line message and a non-zero exit code."""


class ResnetkitError(Exception):
    """Base class for errors caused by input the user can fix (bad names, files, arguments)."""


class UnknownModelError(ResnetkitError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(ResnetkitError):
    """A weights file or URL that cannot be loaded into the requested model."""


class DataError(ResnetkitError):
    """A dataset folder or file that is missing, malformed, unsafe to read, or fails its checksum."""


class ImageTooLarge(DataError):
    """An image with more pixels than allowed (a decompression bomb, or a photo beyond a service's limit)."""


class TrainingInterrupted(ResnetkitError):
    """Ctrl-C: the run stopped at a step boundary and its checkpoint is intact and resumable."""


class NonFiniteLoss(ResnetkitError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class ExportError(ResnetkitError):
    """An export that cannot be made, or an exported file that cannot be used (not ONNX, no metadata, an extra
    that is not installed)."""


class ModelArgumentError(ResnetkitError, ValueError):
    """Model keyword arguments the architecture cannot be built with (an impossible output_stride, a bad width)."""


def first_line(e: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (at most 200 characters), for a one-line error naming what a
    library said; its type's name when it has no message (and before it, with_type)."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0][:200]}" if with_type else lines[0][:200]
