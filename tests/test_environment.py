"""Settings from the environment: unset means the default, anything but a positive number is one clear line."""

import pytest

from liftvid.io.environment import positive_number_from_env

NAME = "LIFTVID_TEST_SETTING"


class SettingError(ValueError):
    pass


@pytest.mark.parametrize("value, kind, expected", [
    (None, int, 7), ("", int, 7), ("12", int, 12), (" 3 ", int, 3), ("1", int, 1),
    (None, float, 2.5), ("0.25", float, 0.25), ("90", float, 90.0),
])
def test_unset_gives_the_default_and_a_number_is_read(monkeypatch, value, kind, expected):
    if value is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, value)
    got = positive_number_from_env(NAME, kind(7 if kind is int else 2.5), kind, "a number")
    assert got == expected and type(got) is kind


@pytest.mark.parametrize("value, kind, message", [
    ("lots", int, "LIFTVID_TEST_SETTING='lots': not a whole number of patches"),
    ("1.5", int, "LIFTVID_TEST_SETTING='1.5': not a whole number of patches"),
    ("0", int, "LIFTVID_TEST_SETTING='0': must be at least 1"),
    ("-4", int, "LIFTVID_TEST_SETTING='-4': must be at least 1"),
    ("soon", float, "LIFTVID_TEST_SETTING='soon': not a whole number of patches"),
    ("0", float, "LIFTVID_TEST_SETTING='0': must be positive"),
    ("nan", float, "LIFTVID_TEST_SETTING='nan': must be positive"),
])
def test_a_bad_value_is_one_line_naming_the_variable_in_the_callers_error(monkeypatch, value, kind, message):
    monkeypatch.setenv(NAME, value)
    with pytest.raises(SettingError) as refused:
        positive_number_from_env(NAME, kind(1), kind, "a whole number of patches", SettingError)
    assert str(refused.value) == message
