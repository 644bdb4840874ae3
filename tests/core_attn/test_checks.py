"""core_attn.validation: the messages every config typo surfaces as."""

from __future__ import annotations

import pytest

from core_attn.validation import check_choice, check_float, check_int, check_range


def test_choice_int_float():
    assert check_choice("backend", "flex", ["auto", "flex"]) == "flex"
    with pytest.raises(ValueError, match=r"backend='flx' is not allowed; expected one of \['auto', 'flex'\]. "
                                         r"Did you mean 'flex'\?"):
        check_choice("backend", "flx", ["auto", "flex"])
    assert check_int("window", 4, min_value=1) == 4
    with pytest.raises(ValueError, match=r"window=True must be an integer"):
        check_int("window", True)
    with pytest.raises(ValueError, match=r"window=0 is out of range; expected 1 <= window <= inf"):
        check_int("window", 0, min_value=1)
    assert check_float("p", 1, max_value=1.0) == 1.0 and isinstance(check_float("p", 1), float)
    with pytest.raises(ValueError, match=r"p='x' must be a number"):
        check_float("p", "x")


def test_range():
    assert check_range("pause", (0, 1.5), min_value=0) == (0.0, 1.5)
    assert check_range("snr_db", [-5, -5]) == (-5.0, -5.0)
    with pytest.raises(ValueError, match=r"pause=\[1.0, 0.5\] must be \[low, high\] seconds with 0 <= low <= high"):
        check_range("pause", (1.0, 0.5), min_value=0, unit="seconds")
    with pytest.raises(ValueError, match=r"width=\[0, 2\] must be \[low, high\] bands with 0 < low <= high"):
        check_range("width", [0, 2], min_value=0, exclusive_min=True, unit="bands")
    with pytest.raises(ValueError, match=r"snr_db=\[1, 2, 3\] must be \[low, high\] with low <= high"):
        check_range("snr_db", [1, 2, 3])
    with pytest.raises(ValueError, match=r"snr_db=5 must be \[low, high\]"):
        check_range("snr_db", 5)
    with pytest.raises(ValueError, match=r"snr_db='ab' must be \[low, high\]"):
        check_range("snr_db", "ab")
    with pytest.raises(ValueError, match=r"snr_db=\['a', 2\] must be \[low, high\]"):
        check_range("snr_db", ["a", 2])


def test_range_takes_a_hydra_list():
    omegaconf = pytest.importorskip("omegaconf")
    assert check_range("pause", omegaconf.OmegaConf.create([0.3, 1.2]), min_value=0) == (0.3, 1.2)
