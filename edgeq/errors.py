"""One exception family for everything a user can get wrong.

The CLI prints ``str(err)`` of any :class:`EdgeqError` on one line and exits with status 2; anything
else is a bug in edgeq and keeps its traceback.
"""


class EdgeqError(Exception):
    """Base of all user-facing errors (bad model, bad bundle, bad input, unknown device...)."""


class ModelError(EdgeqError):
    """The source model cannot be imported or converted (malformed file, unsupported op, NaN weights)."""


class UnsupportedOpError(ModelError):
    """The model uses an op (or op variant) that edgeq cannot convert."""


class CalibrationError(EdgeqError):
    """Calibration data is missing, unreadable, or does not match the model's inputs."""


class BundleError(EdgeqError):
    """A bundle file is malformed, truncated, corrupted or from an unknown format version."""


class InputError(EdgeqError):
    """Run-time inputs do not match the bundle's inputs (name, shape or dtype)."""


class BackendError(EdgeqError):
    """A kernel backend is unavailable (e.g. no C compiler for the C backend)."""


class UnknownDeviceError(EdgeqError):
    """The device id names no profile in device_profiles/."""


class ProfileError(EdgeqError):
    """A device profile file is malformed."""


class ExportError(EdgeqError):
    """A bundle cannot be exported as asked (unknown format, unusable device, output not writable)."""


class ToolchainError(EdgeqError):
    """A cross compiler or emulator is missing, or firmware does not compile."""


class DoesNotFitError(EdgeqError):
    """Firmware does not fit the device's flash or RAM (the link failed), or its stack reserve is too small."""


class FirmwareError(EdgeqError):
    """Firmware hung, faulted, or reported an error under the emulator."""
