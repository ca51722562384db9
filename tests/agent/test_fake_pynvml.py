"""The fake pynvml is only as good as its likeness: check it against the installed one."""

from __future__ import annotations

import pytest

from tests.fakes.fake_pynvml import CONSTANTS, ERRORS, FakeNvml

real = pytest.importorskip("pynvml")


def test_every_number_matches_the_installed_pynvml() -> None:
    for name, value in {**ERRORS, **CONSTANTS}.items():
        assert getattr(real, name) == value, name
    real_errors = {n for n in dir(real) if n.startswith("NVML_ERROR_")}
    assert real_errors <= set(ERRORS), real_errors - set(ERRORS)


def test_the_error_classes_are_the_ones_pynvml_builds() -> None:
    fake = FakeNvml().module
    real_classes = {n for n in dir(real) if n.startswith("NVMLError_")}
    fake_classes = {n for n in dir(fake) if n.startswith("NVMLError_")}
    assert real_classes == fake_classes
    for code in (4, 13, 15):
        r, f = real.NVMLError(code), fake.NVMLError(code)
        assert type(r).__name__ == type(f).__name__
        assert (r.value, str(r)) == (f.value, str(f))
    err = fake.NVMLError_NoPermission()
    assert isinstance(err, fake.NVMLError) and err.value == real.NVML_ERROR_NO_PERMISSION


def test_the_value_structs_have_the_real_layout() -> None:
    fake = FakeNvml().module
    assert [f[0] for f in fake.c_nvmlFieldValue_t._fields_] == [
        f[0] for f in real.c_nvmlFieldValue_t._fields_
    ]
    assert [f[0] for f in fake.c_nvmlUtilization_t._fields_] == [
        f[0] for f in real.c_nvmlUtilization_t._fields_
    ]


def test_every_faked_function_exists_in_the_real_module() -> None:
    fake = FakeNvml().module
    for name in dir(fake):
        if name.startswith("nvml"):
            assert callable(getattr(real, name, None)), name
