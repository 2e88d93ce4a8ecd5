"""Per-instance Parquet tables."""
import pytest

from storage.tables import read_rows, write_rows


def test_round_trip(tmp_path):
    rows = [{"sentence": 0, "length": 3, "steps": 20, "lr": 1e3, "metric": 1.0, "energy": -5.5},
            {"sentence": 1, "length": 7, "steps": 5, "lr": 5.0, "metric": 0.5, "energy": -2.0}]
    path = write_rows(tmp_path / "sub" / "gd.parquet", rows, {"task": "twitter_pos", "split": "test"})
    back, meta = read_rows(path)
    assert back == rows and meta == {"task": "twitter_pos", "split": "test"}


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_rows(tmp_path / "x.parquet", [])
    with pytest.raises(ValueError, match="row 1 has keys"):
        write_rows(tmp_path / "x.parquet", [{"a": 1}, {"b": 2}])
