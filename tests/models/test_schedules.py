import pytest

from hpa_batch.models.schedules import create_schedule


def test_seed_schedule_table4_values():
    lr = create_schedule("seed", epochs=10)  # Table 4 defaults
    expected = {
        0: 0.005,
        1: 0.0037,
        2: 0.0024,
        3: 0.0011,
        4: 0.0011,
        5: 0.0011,
        6: 0.0006 * 0.75 + 0.0005,
        9: 0.0006 * 0.75**4 + 0.0005,
    }
    for epoch, value in expected.items():
        assert lr(epoch) == pytest.approx(value, abs=1e-12), epoch
    assert lr(2.7) == lr(2)  # per-epoch schedule


def test_cosine_warmup_then_decay():
    lr = create_schedule(
        "cosine", epochs=10, lr=0.01, lr_min=0.0001, warmup_epochs=1, warmup_lr=0.001, steps_per_epoch=10
    )
    assert lr(0) == pytest.approx(0.001)
    assert lr(0.5) == pytest.approx(0.001 + (0.01 - 0.001) * 0.5)
    assert lr(1) == pytest.approx(
        0.0001 + 0.5 * (0.01 - 0.0001) * (1 + __import__("math").cos(__import__("math").pi * 0.1))
    )
    assert lr(10) == pytest.approx(0.0001, rel=1e-3)
    assert lr(3) > lr(6) > lr(9)


def test_cyclical_triangle():
    lr = create_schedule("cyclical", epochs=8, lr=0.001, lr_max=0.011, half_cycle_epochs=2)
    assert [round(lr(e), 6) for e in (0, 1, 2, 3, 4, 6)] == [0.001, 0.006, 0.011, 0.006, 0.001, 0.011]


def test_unknown_schedule():
    with pytest.raises(ValueError, match="known"):
        create_schedule("warp", epochs=1)
