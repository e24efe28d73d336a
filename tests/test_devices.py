"""Device profiles: every shipped file loads, carries the documented facts, and bad files are named."""

from __future__ import annotations

import importlib.resources
import json
import pathlib
import shutil
import subprocess

import pytest

from edgeq.devices import DeviceProfile, get_device, list_devices, load_profile
from edgeq.errors import EdgeqError, ProfileError, UnknownDeviceError

REQUIRED_IDS = {"host", "rpi5", "android-npu", "stm32h7", "stm32f7", "nrf52840", "cortex-m55"}
KB = 1024
MB = 1024 * 1024

# A valid profile that the malformed-profile tests break one key at a time.
VALID_TOML = """\
id = "testboard"
name = "Test board"
class = "mcu"
core = "cortex-m4"
cores = 1
clock_mhz = 64
isa_features = ["armv7e-m", "dsp"]
ram_bytes = 262144
flash_bytes = 1048576
mem_bandwidth_bytes_per_s = 256000000
schemes = ["int8"]
default_scheme = "int8"
calibration = "minmax"

[toolchain]
cc = "arm-none-eabi-gcc"
cflags = ["-mcpu=cortex-m4", "-mthumb"]
emulator = "qemu-system-arm"
emulator_machine = "mps2-an386"
"""


def _write(tmp_path: pathlib.Path, text: str, stem: str = "testboard") -> pathlib.Path:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _replace_line(text: str, key: str, new_line: str | None) -> str:
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
    assert len(hits) == 1, key
    if new_line is None:
        del lines[hits[0]]
    else:
        lines[hits[0]] = new_line
    return "\n".join(lines) + "\n"


def test_every_shipped_profile_loads_and_required_devices_exist() -> None:
    devices = list_devices()
    ids = [d.id for d in devices]
    assert REQUIRED_IDS <= set(ids)
    assert ids == sorted(ids)
    for device in devices:
        assert isinstance(device, DeviceProfile)
        assert device.default_scheme in device.schemes
        assert get_device(device.id) == device


def test_ids_are_unique_and_match_file_names() -> None:
    root = importlib.resources.files("edgeq.device_profiles")
    stems = sorted(e.name.removesuffix(".toml") for e in root.iterdir() if e.name.endswith(".toml"))
    ids = [d.id for d in list_devices()]
    assert len(ids) == len(set(ids))
    assert ids == stems


@pytest.mark.parametrize(
    ("device_id", "ram", "flash", "clock_mhz", "core"),
    [
        ("stm32f7", 320 * KB, 1 * MB, 216, "cortex-m7"),
        ("stm32h7", 512 * KB, 2 * MB, 480, "cortex-m7"),
        ("nrf52840", 256 * KB, 1 * MB, 64, "cortex-m4"),
    ],
)
def test_mcu_facts(device_id: str, ram: int, flash: int, clock_mhz: int, core: str) -> None:
    device = get_device(device_id)
    assert device.device_class == "mcu"
    assert (device.ram_bytes, device.flash_bytes, device.clock_mhz, device.core) == (
        ram,
        flash,
        clock_mhz,
        core,
    )
    assert device.schemes == ("int8",)
    assert device.budget_activation_bytes == ram
    assert device.budget_weights_bytes == flash
    assert device.toolchain.cc == "arm-none-eabi-gcc"
    assert f"-mcpu={core}" in device.toolchain.cflags


def test_mcu_emulator_machines() -> None:
    expected = {
        "nrf52840": "mps2-an386",
        "stm32f7": "mps2-an500",
        "stm32h7": "mps2-an500",
        "cortex-m55": "mps3-an547",
    }
    for device_id, machine in expected.items():
        toolchain = get_device(device_id).toolchain
        assert (toolchain.emulator, toolchain.emulator_machine) == ("qemu-system-arm", machine)


def test_rpi5_facts() -> None:
    rpi5 = get_device("rpi5")
    assert rpi5.device_class == "cpu"
    assert (rpi5.core, rpi5.cores, rpi5.clock_mhz) == ("cortex-a76", 4, 2400)
    assert rpi5.ram_bytes == 4 * 1024**3
    assert rpi5.flash_bytes == 0
    # The measured figure, not the 17 GB/s theoretical one: decode-speed estimates depend on it.
    assert 9e9 <= rpi5.mem_bandwidth_bytes_per_s <= 11e9
    assert {"neon", "dotprod"} <= set(rpi5.isa_features)
    assert {"int8", "int4", "ternary", "ptqtp", "lut2", "lut3"} <= set(rpi5.schemes)
    assert rpi5.budget_weights_bytes == rpi5.ram_bytes
    assert rpi5.toolchain.cc == "aarch64-linux-gnu-gcc"
    assert "-march=armv8.2-a+dotprod" in rpi5.toolchain.cflags
    assert (rpi5.toolchain.emulator, rpi5.toolchain.emulator_cpu) == ("qemu-aarch64", "cortex-a76")


def test_host_budgets_are_left_to_the_machine() -> None:
    host = get_device("host")
    assert host.device_class == "cpu"
    assert host.toolchain.cc == ""
    assert host.budget_activation_bytes is None
    assert host.budget_weights_bytes is None


def test_android_npu_profile() -> None:
    npu = get_device("android-npu")
    assert npu.device_class == "npu"
    assert npu.calibration == "percentile"
    assert npu.npu is not None
    assert npu.npu["vtcm_bytes"] == 8 * MB
    assert npu.npu["activation_dtypes"] == ["uint8", "int16"]
    needed = {"Conv", "Gemm", "Add", "Mul", "MaxPool", "AveragePool", "Softmax", "Concat", "Reshape"}
    assert needed <= set(npu.npu["ops"])
    assert npu.budget_weights_bytes == npu.ram_bytes
    for other in list_devices():
        if other.device_class != "npu":
            assert other.npu is None


def test_to_dict_is_json_and_round_trips() -> None:
    for device in list_devices():
        data = json.loads(json.dumps(device.to_dict()))
        assert data["class"] == device.device_class
        assert DeviceProfile.from_dict(data) == device


def test_profiles_are_hashable_and_frozen() -> None:
    device = get_device("stm32f7")
    assert {device: 1}[get_device("stm32f7")] == 1
    with pytest.raises(AttributeError):
        device.ram_bytes = 1  # type: ignore[misc]


def test_unknown_device_lists_known_ids_on_one_line() -> None:
    with pytest.raises(UnknownDeviceError) as info:
        get_device("foo")
    message = str(info.value)
    assert isinstance(info.value, EdgeqError)
    assert "\n" not in message
    assert message.startswith("unknown device 'foo'; known devices: ")
    known = message.split("known devices: ", 1)[1].split(", ")
    assert known == sorted(d.id for d in list_devices())


def test_unknown_device_cannot_escape_the_package() -> None:
    with pytest.raises(UnknownDeviceError):
        get_device("../pyproject")


def test_valid_template_loads(tmp_path: pathlib.Path) -> None:
    profile = load_profile(_write(tmp_path, VALID_TOML))
    assert profile.id == "testboard"
    # emulator_cpu is optional so that files written to the four-key toolchain schema load.
    assert profile.toolchain.emulator_cpu == ""


@pytest.mark.parametrize(
    ("key", "new_line", "needle"),
    [
        ("flash_bytes", None, "'flash_bytes'"),
        ("clock_mhz", 'clock_mhz = "64"', "'clock_mhz'"),
        ("ram_bytes", "ram_bytes = 262144.0", "'ram_bytes'"),
        ("mem_bandwidth_bytes_per_s", "mem_bandwidth_bytes_per_s = 2.56e8", "'mem_bandwidth_bytes_per_s'"),
        ("cores", "cores = true", "'cores'"),
        ("class", 'class = "gpu"', "'class'"),
        ("default_scheme", 'default_scheme = "int4"', "'default_scheme'"),
        ("schemes", 'schemes = ["in8"]', "'schemes'"),
        ("calibration", 'calibration = "entropy"', "'calibration'"),
        ("isa_features", 'isa_features = "dsp"', "'isa_features'"),
        ("ram_bytes", "ram_bytes = 0", "'ram_bytes'"),
        ("cflags", 'cflags = "-mthumb"', "'toolchain.cflags'"),
        ("emulator", None, "'toolchain.emulator'"),
        ("id", 'id = "otherboard"', "'id'"),
        ("flash_bytes", "flash_byte = 1048576", "'flash_byte'"),
    ],
)
def test_malformed_profile_names_file_and_key(
    tmp_path: pathlib.Path, key: str, new_line: str | None, needle: str
) -> None:
    path = _write(tmp_path, _replace_line(VALID_TOML, key, new_line))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message
    assert needle in message
    assert isinstance(info.value, EdgeqError)


def test_npu_table_is_validated(tmp_path: pathlib.Path) -> None:
    npu_text = _replace_line(VALID_TOML, "class", 'class = "npu"')
    with pytest.raises(ProfileError, match="'npu'"):
        load_profile(_write(tmp_path, npu_text))
    table = '\n[npu]\nvtcm_bytes = {}\nactivation_dtypes = ["uint8"]\nops = ["Conv"]\n'
    with pytest.raises(ProfileError, match="'npu.vtcm_bytes'"):
        load_profile(_write(tmp_path, npu_text + table.format('"8M"')))
    assert load_profile(_write(tmp_path, npu_text + table.format(1024))).npu["vtcm_bytes"] == 1024
    with pytest.raises(ProfileError, match="'npu'"):
        load_profile(_write(tmp_path, VALID_TOML + table.format(1024)))


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: pathlib.Path) -> None:
    bad = _write(tmp_path, "id = \n")
    with pytest.raises(ProfileError, match="not valid TOML") as info:
        load_profile(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.toml")


def test_cflags_are_accepted_by_the_cross_compilers(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "probe.c"
    source.write_text("int edgeq_probe(int x) { return x * 3; }\n", encoding="utf-8")
    tried = 0
    for device in list_devices():
        cc = device.toolchain.cc
        if not cc or shutil.which(cc) is None:
            continue
        tried += 1
        result = subprocess.run(
            [cc, *device.toolchain.cflags, "-c", str(source), "-o", str(tmp_path / f"{device.id}.o")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{device.id}: {cc} rejected its cflags: {result.stderr}"
    if not tried:
        pytest.skip("no cross compiler named by a profile is installed")
