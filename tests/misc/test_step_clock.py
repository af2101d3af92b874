"""The pipeline's progress lines: step count, elapsed time and a time left from the steps already done."""

from __future__ import annotations

from medkd3d.pipeline import StepClock, format_duration


def test_format_duration_reads_like_a_person_writes_it() -> None:
    assert format_duration(0.4) == "0 s"
    assert format_duration(42) == "42 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_duration(-3) == "0 s"


def test_time_left_is_the_mean_of_finished_steps_times_the_steps_to_go() -> None:
    now = [100.0]
    clock = StepClock(started=100.0, clock=lambda: now[0])
    clock.phase("trainings", 3)
    with clock.step() as prefix:
        assert prefix == "[trainings 1/3, 0 s elapsed]"  # nothing finished yet: no guess
        now[0] = 160.0  # the first training takes 60 s
    with clock.step() as prefix:
        assert prefix == "[trainings 2/3, 1 min 00 s elapsed, about 2 min 00 s left for the trainings]"
        now[0] = 180.0  # the second 20 s: mean 40 s, one to go
    assert clock.start() == "[trainings 3/3, 1 min 20 s elapsed, about 40 s left for the trainings]"
    clock.phase("evaluations", 2)  # a new phase forgets the previous one's durations
    assert clock.start() == "[evaluations 1/2, 1 min 20 s elapsed]"


def test_time_left_is_shared_by_the_workers() -> None:
    clock = StepClock(started=0.0, clock=lambda: 90.0)
    clock.phase("trainings", 5, workers=2)
    clock.start(), clock.start()  # two run at once
    clock.finish(60.0)
    # four trainings still to finish at about 60 s each, two at a time
    assert clock.start() == "[trainings 3/5, 1 min 30 s elapsed, about 2 min 00 s left for the trainings]"
