"""``mmgrid_env.render.render_rgb_array``: headless (Agg) pictures of a real episode's dispatch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mmgrid_env import parallel_env  # noqa: E402
from mmgrid_env.render import RENDER_KEYS, render_rgb_array  # noqa: E402


@pytest.fixture(scope="module")
def history():
    env = parallel_env()
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    steps = []
    for _ in range(6):
        *_, infos = env.step({a: rng.uniform(-1, 1, 4).astype(np.float32) for a in env.agents})
        steps.append(infos)
    return steps


def test_shape_dtype_not_blank(history):
    img = render_rgb_array(history)
    assert img.shape == (720, 960, 3) and img.dtype == np.uint8
    assert img.flags["C_CONTIGUOUS"]
    # not a blank canvas: many distinct colours, including the bar colours, and plenty of non-white pixels
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    assert (img.min(axis=2) < 200).mean() > 0.05
    assert np.any(np.all(img == (0xf2, 0xb7, 0x01), axis=2)) or np.any(np.all(img == (0x7f, 0x3c, 0x8d), axis=2))


def test_changes_with_more_steps_and_is_deterministic(history):
    a = render_rgb_array(history[:2])
    b = render_rgb_array(history)
    assert a.shape == b.shape
    assert (a != b).any(axis=2).mean() > 0.001
    np.testing.assert_array_equal(b, render_rgb_array(history))


def test_size_empty_and_bad_input(history):
    small = render_rgb_array(history, width=400, height=300, dpi=50)
    assert small.shape == (300, 400, 3)
    one = render_rgb_array(history, agents=["mg_1"])
    assert one.shape == (720, 960, 3)
    assert render_rgb_array([]).shape == (720, 960, 3)
    assert set(RENDER_KEYS) <= set(history[0]["mg_0"])
    broken = [{a: {k: v for k, v in d.items() if k != "soc"} for a, d in history[0].items()}]
    with pytest.raises(KeyError, match="soc"):
        render_rgb_array(broken)


def test_env_render_rgb_array_mode():
    env = parallel_env(render_mode="rgb_array")
    env.reset(seed=1)
    first = None
    for _ in range(3):
        env.step({a: np.zeros(4, np.float32) for a in env.agents})
        frame = env.render()
        first = frame if first is None else first
    assert frame.shape == (720, 960, 3) and frame.dtype == np.uint8
    assert (first != frame).any()  # the figure grows with the episode
    env.reset(seed=1)
    assert env.render().shape == (720, 960, 3)  # empty history after reset: empty axes, no error
