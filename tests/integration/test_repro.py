"""verify_reproducibility against real workers."""

from __future__ import annotations

from typing import Any

import pytest
from torch.utils.data import DataLoader

import wellfed
from tests.helpers_seeding import AugmentDataset, RngObjectDataset

pytestmark = [pytest.mark.workers, pytest.mark.timeout(60)]


def test_seeded_loader_is_reproducible() -> None:
    ds = AugmentDataset(12)
    report = wellfed.verify_reproducibility(
        lambda **kw: wellfed.create_dataloader(ds, batch_size=4, shuffle=True, seed=1, **kw),
        num_workers=(0, 2),
        start_methods="fork",
    )
    assert report.reproducible, report.to_dict()
    assert [r.label for r in report.runs] == ["num_workers=0", "num_workers=2, fork"]
    assert report.runs[1].batches == 6
    assert report.mismatch is None
    assert report.likely_cause is None


def test_plain_loader_is_not_and_says_why() -> None:
    ds = AugmentDataset(12)
    report = wellfed.verify_reproducibility(
        lambda **kw: DataLoader(ds, batch_size=4, **kw), start_methods=["fork"], epochs=1
    )
    assert not report.reproducible
    m = report.mismatch
    assert m is not None
    assert (m.epoch, m.batch, m.sample) == (0, 0, 0)
    assert report.likely_cause is not None
    assert "create_dataloader" in report.likely_cause
    assert report.to_dict()["mismatch"]["run"] == "num_workers=2, fork"


def _doctor_ready() -> bool:
    try:
        from wellfed.doctor import diagnose  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _doctor_ready(), reason="wellfed.doctor not landed yet")
def test_rng_object_is_named_as_the_cause() -> None:
    def make(**kw: Any) -> Any:
        # a fresh dataset per build, so the reference run does not advance the copy's state
        return DataLoader(RngObjectDataset(8), batch_size=4, **kw)

    report = wellfed.verify_reproducibility(make, start_methods="fork", epochs=1)
    assert not report.reproducible
    assert report.mismatch is not None
    assert report.mismatch.batch == 1
    assert any(f.path == "dataset.rng" for f in report.findings)
    assert report.likely_cause is not None
    assert "dataset.rng" in report.likely_cause
    assert "sample_rng" in report.likely_cause


def test_bad_options() -> None:
    with pytest.raises(wellfed.ConfigError) as info:
        wellfed.verify_reproducibility(lambda **kw: None, epochs=0)
    assert info.value.code == "WF211"
    with pytest.raises(wellfed.ConfigError):
        wellfed.verify_reproducibility(lambda **kw: None, start_methods=["nope"])
    with pytest.raises(wellfed.ConfigError):
        wellfed.verify_reproducibility(lambda **kw: None, num_workers=())
