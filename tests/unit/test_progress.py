"""Progress of long stages: a bar on a terminal, plain lines with an ETA in a log (no carriage returns)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from rl.core.progress import Progress, clock, quiet_library_bars
from rl.sft_callbacks import Scalars


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_in_a_log_status_lines_say_the_count_the_eta_and_the_metrics():
    now, lines = Clock(), []
    bar = Progress(10, "grpo", log=lines.append, terminal=False, every_s=30, now=now)
    for _ in range(4):
        now.t += 10  # 10 s per step: a line at most every 30 s
        bar.update(1, reward=0.5)
    assert lines == ["grpo 3/10 (30%) 00:30 elapsed, ETA 01:10 | reward 0.500"]
    bar.write("step    4 | reward 0.500")  # the stage's own line ends with the ETA: 6 steps x 10 s
    assert lines[-1] == "step    4 | reward 0.500  ETA 01:00"
    now.t += 20  # 20 s after the written line: no status line yet
    bar.update(1)
    assert len(lines) == 2
    now.t += 30
    bar.close()
    assert lines[-1] == "grpo 5/10 in 01:30"


def test_a_resumed_stage_times_only_the_units_done_since_it_started():
    now, lines = Clock(), []
    bar = Progress(100, "sft", initial=90, log=lines.append, terminal=False, now=now)
    assert bar.eta_text() == "ETA --:--"  # nothing done yet in this start
    now.t += 20
    bar.update(2)
    assert bar.eta() == 80.0  # 10 s per step since the start, 8 to go (not 20 s / 92 steps)
    assert clock(3725) == "1:02:05"


def test_without_a_terminal_nothing_is_redrawn(capsys):
    """pytest captures both streams, as a pipe to a log would: no tqdm bar, no carriage return anywhere."""
    bar = Progress(3, "eval test", every_s=0)
    for _ in range(3):
        bar.update(1)
    bar.write("evaluated a seed 0: done")
    bar.close()
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err and out.err == ""
    lines = out.out.splitlines()
    assert lines[0].startswith("eval test 1/3 (33%) ") and "ETA" in lines[0]
    assert lines[3].startswith("evaluated a seed 0: done  ETA 00:00")
    assert lines[4].startswith("eval test 3/3 in ")


def test_on_a_terminal_a_bar_is_drawn_and_lines_print_above_it(capsys):
    bar = Progress(2, "grpo", terminal=True)
    bar.update(1, reward=0.25)
    bar.write("step    1 | reward 0.250")
    bar.close()
    out = capsys.readouterr()
    assert "step    1 | reward 0.250\n" in out.out and "ETA" not in out.out  # the bar shows the ETA
    assert "\r" in out.err and "grpo" in out.err and "reward=0.250" in out.err


def test_in_a_log_the_libraries_draw_no_bars_either(capsys):
    from transformers.utils import logging

    logging.enable_progress_bar()
    try:
        quiet_library_bars()  # pytest captures the output: not a terminal
        assert not logging.is_progress_bar_enabled()
        for _ in logging.tqdm(range(3), desc="Writing model shards"):
            pass
        assert capsys.readouterr().err == ""
    finally:
        logging.enable_progress_bar()


def test_sft_lines_keep_their_content_and_gain_an_eta(tmp_path, capsys):
    scalars = Scalars(tmp_path / "sft", main=True)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=1)
    state = SimpleNamespace(max_steps=4, global_step=0)
    scalars.on_train_begin(args, state, None)
    for step in (1, 2):
        state.global_step = step
        scalars.on_step_end(args, state, None)
    scalars.on_log(args, state, None, logs={"loss": 1.25, "learning_rate": 1e-4})
    scalars.close()
    out = capsys.readouterr().out
    assert "\r" not in out
    line = next(x for x in out.splitlines() if x.startswith("sft step"))
    assert line.startswith("sft step 2/4  loss 1.2500  lr 1.00e-04  ") and " samples/s  ETA " in line


def test_sft_images_land_in_tensorboard_under_their_tag(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = Scalars(tmp_path / "sft", main=True)
    scalars.image("predictions", Image.new("RGB", (16, 8), (255, 0, 0)), 0)
    scalars.image("predictions", Image.new("RGB", (16, 8), (0, 255, 0)), 4)
    scalars.close()
    events = EventAccumulator(str(tmp_path / "sft"))
    events.Reload()
    assert events.Tags()["images"] == ["sft/predictions"]
    shown = events.Images("sft/predictions")
    assert [e.step for e in shown] == [0, 4] and (shown[0].width, shown[0].height) == (16, 8)
    Scalars(tmp_path / "rank1", main=False).image("predictions", np.zeros((2, 2, 3), np.uint8), 0)
    assert not (tmp_path / "rank1").exists()  # other ranks write nothing


def test_sft_draws_the_greedy_answers_of_the_first_val_rows_as_grpo_does(tmp_path, tiny_config, synthetic_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rl.core.data import load_split
    from rl.sft_callbacks import GroundingEval
    from rl.visualize import prediction_grid

    rows = load_split(synthetic_dir / "val.jsonl").rows[:10]
    answers = [row.answer for row in rows]  # what a perfect model would answer
    scalars = Scalars(tmp_path / "sft", main=True)
    GroundingEval(tiny_config, rows, scalars)._draw(answers, 7)
    scalars.close()
    events = EventAccumulator(str(tmp_path / "sft"))
    events.Reload()
    (shown,) = events.Images("sft/predictions")
    grid = prediction_grid([r.image for r in rows[:8]], answers[:8], answers[:8], [r.extent for r in rows[:8]])
    assert shown.step == 7 and (shown.width, shown.height) == grid.size  # 8 tiles: two rows of four
