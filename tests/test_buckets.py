"""Resolution buckets against the reference's choices (golden `buckets`, SPEC §2.10)."""

from __future__ import annotations

import pytest

from lc_runtime.buckets import BUCKET_TABLES, get_bucket_table, get_condition_shape


def test_every_golden_row(golden):
    case = golden("buckets")
    cols = case.meta["columns"]
    assert cols == ["input_height", "input_width", "resolution", "scale_factor_spatial", "H", "W"]
    rows = case.meta["rows"]
    assert len(rows) == 300
    wrong = [r for r in rows if get_condition_shape(r[0], r[1], r[2], r[3]) != (r[4], r[5])]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {wrong[:5]}"


def test_spec_examples():
    assert get_condition_shape(480, 832, "480p", 16) == (480, 832)
    assert get_condition_shape(2048, 2048, "480p", 16) == (608, 640)  # the i2v demo image
    assert get_condition_shape(480, 832, "720p", 64) == (704, 1280)  # refine on one GPU
    assert get_condition_shape(480, 832, "720p", 128) == (768, 1280)  # refine with cp=2


def test_tables_are_divisible_by_their_factor():
    for resolution, by_factor in BUCKET_TABLES.items():
        for factor, table in by_factor.items():
            for key, (h, w) in table.items():
                assert h % factor == 0 and w % factor == 0, (resolution, factor, key, h, w)


def test_tie_goes_to_earlier_key():
    # 5/4 = 1.25 lies exactly (in binary floating point too) between the keys "1.00" and "1.50".
    table = get_bucket_table("480p", 256)
    assert abs(1.00 - 5 / 4) == abs(1.50 - 5 / 4)
    assert get_condition_shape(5, 4, "480p", 256) == table["1.00"] != table["1.50"]


@pytest.mark.parametrize(("resolution", "factor"), [("1080p", 16), ("480p", 8), ("720p", 48)])
def test_unknown_table_raises(resolution, factor):
    with pytest.raises(ValueError, match=str(factor) if resolution != "1080p" else "1080p"):
        get_condition_shape(480, 832, resolution, factor)


def test_bad_size_raises():
    with pytest.raises(ValueError, match="positive"):
        get_condition_shape(0, 832, "480p", 16)
