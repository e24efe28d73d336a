"""Target device profiles: what a bundle must fit into and how to build and emulate it.

Profiles are data, not code: one TOML file per device in the ``edgeq.device_profiles`` package
(``device_profiles/`` in the repository), so a new board is one file and one review. This module
reads them strictly, because a wrong type in a budget (``"320K"``, ``3.2e5``) would otherwise
surface much later as a nonsense memory plan or a linker script that silently lies.
"""

from __future__ import annotations

import copy
import importlib.resources
import pathlib
import tomllib
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from typing import Any, Mapping

from edgeq.errors import ProfileError, UnknownDeviceError

__all__ = [
    "CALIBRATION_METHODS",
    "DEVICE_CLASSES",
    "KNOWN_SCHEMES",
    "DeviceProfile",
    "Toolchain",
    "get_device",
    "list_devices",
    "load_profile",
]

DEVICE_CLASSES: tuple[str, ...] = ("cpu", "npu", "mcu")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
# Checked so that a typo in a profile ("in8") fails at load time instead of at conversion time.
KNOWN_SCHEMES: tuple[str, ...] = ("int8", "int4", "ternary", "ptqtp", "lut2", "lut3")

_PROFILE_PACKAGE = "edgeq.device_profiles"

# Top-level keys every profile must have, with the type each must be. "toolchain" and "npu" are
# tables handled separately.
_REQUIRED_SCALARS: dict[str, type] = {
    "id": str,
    "name": str,
    "class": str,
    "core": str,
    "cores": int,
    "clock_mhz": int,
    "ram_bytes": int,
    "flash_bytes": int,
    "mem_bandwidth_bytes_per_s": int,
    "default_scheme": str,
    "calibration": str,
}
_REQUIRED_STR_LISTS: tuple[str, ...] = ("isa_features", "schemes")
_TOP_LEVEL_KEYS = frozenset(_REQUIRED_SCALARS) | frozenset(_REQUIRED_STR_LISTS) | {"toolchain", "npu"}

_TOOLCHAIN_STR_KEYS: tuple[str, ...] = ("cc", "emulator", "emulator_machine")
# emulator_cpu is optional so that a profile written to the original four-key schema still loads.
_TOOLCHAIN_KEYS = frozenset(_TOOLCHAIN_STR_KEYS) | {"cflags", "emulator_cpu"}


@dataclass(frozen=True)
class Toolchain:
    """How to build for and emulate a device.

    ``cc`` is the cross compiler ("" means the host's own compiler); ``emulator_machine`` is the
    ``-M`` value for system-mode QEMU and ``emulator_cpu`` the ``-cpu`` value for user-mode QEMU
    ("" when not applicable).
    """

    cc: str
    cflags: tuple[str, ...]
    emulator: str
    emulator_machine: str
    emulator_cpu: str = ""


@dataclass(frozen=True)
class DeviceProfile:
    """One target device, as described by its ``<id>.toml`` file.

    The TOML key ``class`` is the attribute ``device_class`` (``class`` is a Python keyword).
    A value of 0 for ``ram_bytes``, ``cores``, ``clock_mhz`` or ``mem_bandwidth_bytes_per_s`` means
    "not fixed: ask the machine" (the ``host`` profile).
    """

    id: str
    name: str
    device_class: str
    core: str
    cores: int
    clock_mhz: int
    isa_features: tuple[str, ...]
    ram_bytes: int
    flash_bytes: int
    mem_bandwidth_bytes_per_s: int
    schemes: tuple[str, ...]
    default_scheme: str
    calibration: str
    toolchain: Toolchain
    # Excluded from hashing because a dict is unhashable; profiles stay usable as dict keys.
    npu: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def budget_activation_bytes(self) -> int | None:
        """Bytes available for activations (the arena), or None when the machine decides."""
        return self.ram_bytes or None

    @property
    def budget_weights_bytes(self) -> int | None:
        """Bytes available for weights: flash on an MCU, RAM elsewhere; None when unbounded/unknown."""
        budget = self.flash_bytes if self.device_class == "mcu" else self.ram_bytes
        return budget or None

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain JSON-able data, keyed as in the TOML file."""
        return {
            "id": self.id,
            "name": self.name,
            "class": self.device_class,
            "core": self.core,
            "cores": self.cores,
            "clock_mhz": self.clock_mhz,
            "isa_features": list(self.isa_features),
            "ram_bytes": self.ram_bytes,
            "flash_bytes": self.flash_bytes,
            "mem_bandwidth_bytes_per_s": self.mem_bandwidth_bytes_per_s,
            "schemes": list(self.schemes),
            "default_scheme": self.default_scheme,
            "calibration": self.calibration,
            "toolchain": {
                "cc": self.toolchain.cc,
                "cflags": list(self.toolchain.cflags),
                "emulator": self.toolchain.emulator,
                "emulator_machine": self.toolchain.emulator_machine,
                "emulator_cpu": self.toolchain.emulator_cpu,
            },
            "npu": copy.deepcopy(self.npu),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> DeviceProfile:
        """Build and validate a profile from TOML-shaped data (the inverse of :meth:`to_dict`).

        ``source`` names the origin in error messages. Raises :class:`ProfileError`.
        """
        return _parse_profile(data, source)


def load_profile(path: pathlib.Path | Traversable) -> DeviceProfile:
    """Read and validate one profile file.

    The file's stem must equal its ``id``, because :func:`get_device` finds profiles by file name.
    Raises :class:`ProfileError` naming the file and the offending key.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{source}: cannot read device profile: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{source}: not valid TOML: {exc}") from exc
    profile = _parse_profile(data, source)
    stem = path.name.removesuffix(".toml")
    if profile.id != stem:
        raise ProfileError(
            f"{source}: key 'id' is {profile.id!r} but the file is named {path.name!r}; they must match"
        )
    return profile


def list_devices() -> list[DeviceProfile]:
    """Return every shipped device profile, sorted by id. Raises :class:`ProfileError` if one is bad."""
    return [load_profile(entry) for _, entry in sorted(_profile_files().items())]


def get_device(id: str) -> DeviceProfile:  # noqa: A002 - the public API names the parameter "id"
    """Return the profile whose id is ``id``.

    Raises :class:`UnknownDeviceError` (listing the known ids) when there is none.
    """
    files = _profile_files()
    entry = files.get(id)
    if entry is None:
        raise UnknownDeviceError(f"unknown device {id!r}; known devices: {', '.join(sorted(files))}")
    return load_profile(entry)


def _profile_files() -> dict[str, Traversable]:
    # Looked up by listing rather than by building "<id>.toml", so an id like "../x" can never
    # reach outside the package.
    root = importlib.resources.files(_PROFILE_PACKAGE)
    return {
        entry.name.removesuffix(".toml"): entry
        for entry in root.iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    }


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_type(value: Any, expected: type, key: str, source: str) -> None:
    # bool is a subclass of int, but "cores = true" is a mistake, not a count.
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ProfileError(
            f"{source}: key {key!r} must be {'an integer' if expected is int else 'a string'}, "
            f"got {_type_name(value)} {value!r}"
        )


def _str_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProfileError(f"{source}: key {key!r} must be a list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ProfileError(f"{source}: key {key!r} has duplicate entries: {value!r}")
    return tuple(value)


def _reject_unknown(table: Mapping[str, Any], allowed: frozenset[str], prefix: str, source: str) -> None:
    # An unknown key is almost always a misspelling ("flash_byte") or a key put in the wrong table;
    # ignoring it would hide the mistake behind a less helpful "missing key" or a silent default.
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ProfileError(f"{source}: unknown key {prefix + unknown[0]!r}")


def _parse_toolchain(value: Any, source: str) -> Toolchain:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{source}: key 'toolchain' must be a table, got {_type_name(value)}")
    _reject_unknown(value, _TOOLCHAIN_KEYS, "toolchain.", source)
    for key in (*_TOOLCHAIN_STR_KEYS, "cflags"):
        if key not in value:
            raise ProfileError(f"{source}: missing key 'toolchain.{key}'")
    for key in _TOOLCHAIN_STR_KEYS:
        _check_type(value[key], str, f"toolchain.{key}", source)
    emulator_cpu = value.get("emulator_cpu", "")
    _check_type(emulator_cpu, str, "toolchain.emulator_cpu", source)
    return Toolchain(
        cc=value["cc"],
        cflags=_str_list(value["cflags"], "toolchain.cflags", source),
        emulator=value["emulator"],
        emulator_machine=value["emulator_machine"],
        emulator_cpu=emulator_cpu,
    )


def _parse_npu(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{source}: key 'npu' must be a table, got {_type_name(value)}")
    for key in ("vtcm_bytes", "activation_dtypes", "ops"):
        if key not in value:
            raise ProfileError(f"{source}: missing key 'npu.{key}'")
    _check_type(value["vtcm_bytes"], int, "npu.vtcm_bytes", source)
    if value["vtcm_bytes"] < 0:
        raise ProfileError(f"{source}: key 'npu.vtcm_bytes' must be >= 0, got {value['vtcm_bytes']}")
    for key in ("activation_dtypes", "ops"):
        if not _str_list(value[key], f"npu.{key}", source):
            raise ProfileError(f"{source}: key 'npu.{key}' must not be empty")
    # Other [npu] keys (soc, recipes, ...) are descriptive and passed through; a deep copy keeps
    # callers from mutating the parsed TOML behind the profile's back.
    return copy.deepcopy(dict(value))


def _parse_profile(data: Mapping[str, Any], source: str) -> DeviceProfile:
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: a device profile must be a table, got {_type_name(data)}")
    _reject_unknown(data, _TOP_LEVEL_KEYS, "", source)
    for key in (*_REQUIRED_SCALARS, *_REQUIRED_STR_LISTS, "toolchain"):
        if key not in data:
            raise ProfileError(f"{source}: missing key {key!r}")
    for key, expected in _REQUIRED_SCALARS.items():
        _check_type(data[key], expected, key, source)
    isa_features = _str_list(data["isa_features"], "isa_features", source)
    schemes = _str_list(data["schemes"], "schemes", source)

    for key in ("id", "name", "core"):
        if not data[key].strip():
            raise ProfileError(f"{source}: key {key!r} must not be empty")
    device_class = data["class"]
    if device_class not in DEVICE_CLASSES:
        raise ProfileError(
            f"{source}: key 'class' must be one of {', '.join(DEVICE_CLASSES)}; got {device_class!r}"
        )
    for key in ("cores", "clock_mhz", "ram_bytes", "flash_bytes", "mem_bandwidth_bytes_per_s"):
        if data[key] < 0:
            raise ProfileError(f"{source}: key {key!r} must be >= 0, got {data[key]}")
    if device_class == "mcu":
        # An MCU has no machine to ask: without fixed budgets no memory plan or linker script can
        # be made for it.
        for key in ("cores", "clock_mhz", "ram_bytes", "flash_bytes"):
            if data[key] == 0:
                raise ProfileError(f"{source}: key {key!r} must be > 0 for class 'mcu'")
    if not schemes:
        raise ProfileError(f"{source}: key 'schemes' must not be empty")
    unknown_schemes = [s for s in schemes if s not in KNOWN_SCHEMES]
    if unknown_schemes:
        raise ProfileError(
            f"{source}: key 'schemes' has unknown scheme {unknown_schemes[0]!r}; "
            f"known: {', '.join(KNOWN_SCHEMES)}"
        )
    if data["default_scheme"] not in schemes:
        raise ProfileError(
            f"{source}: key 'default_scheme' is {data['default_scheme']!r}, "
            f"which is not in 'schemes' ({', '.join(schemes)})"
        )
    if data["calibration"] not in CALIBRATION_METHODS:
        raise ProfileError(
            f"{source}: key 'calibration' must be one of {', '.join(CALIBRATION_METHODS)}; "
            f"got {data['calibration']!r}"
        )

    toolchain = _parse_toolchain(data["toolchain"], source)
    npu_value = data.get("npu")
    if device_class == "npu" and npu_value is None:
        raise ProfileError(f"{source}: missing key 'npu' (required for class 'npu')")
    if device_class != "npu" and npu_value is not None:
        raise ProfileError(f"{source}: key 'npu' is only allowed for class 'npu'")
    npu = _parse_npu(npu_value, source) if npu_value is not None else None

    return DeviceProfile(
        id=data["id"],
        name=data["name"],
        device_class=device_class,
        core=data["core"],
        cores=data["cores"],
        clock_mhz=data["clock_mhz"],
        isa_features=isa_features,
        ram_bytes=data["ram_bytes"],
        flash_bytes=data["flash_bytes"],
        mem_bandwidth_bytes_per_s=data["mem_bandwidth_bytes_per_s"],
        schemes=schemes,
        default_scheme=data["default_scheme"],
        calibration=data["calibration"],
        toolchain=toolchain,
        npu=npu,
    )
