"""The frame budget's decisions, on made-up stage times (the session tests drive it with real frames)."""

from online_denoise.budget import RESTORE_MARGIN, FrameBudget, shed


class Step:
    """Saves ``saving`` ms when shed; costs ``cost`` ms to take back. ``log`` records what happened."""

    def __init__(self, name, saving, cost=None, log=None):
        self.name, self.saving, self.cost = name, saving, saving if cost is None else cost
        self.log = log if log is not None else []

    def shed(self, window):
        self.log.append(("shed", self.name))
        return self.saving

    def restore_cost(self, window):
        return self.cost

    def restore(self):
        self.log.append(("restored", self.name))


def test_each_budget_step_is_taken_only_while_the_savings_so_far_fall_short():
    log = []
    steps = [Step("aux", 15.0, log=log), Step("roulette", 30.0, log=log)]
    assert [s.name for s in shed(10.0, steps, {})] == ["aux"]  # its saving covers the overshoot
    assert len(steps) == 1
    steps = [Step("aux", 15.0), Step("roulette", 30.0)]
    assert [s.name for s in shed(72.0, steps, {})] == ["aux", "roulette"]  # still over after both
    assert steps == []
    steps = [Step("nothing here", None), Step("aux", 15.0), Step("roulette", 30.0)]
    assert [s.name for s in shed(5.0, steps, {})] == ["aux"]  # a step with nothing to shed is dropped
    assert [s.name for s in steps] == ["roulette"]
    assert shed(-1.0, steps, {}) == [] and len(steps) == 1  # under budget: nothing


def run(budget, frames):
    """Feed ``frames`` (a list of frame times, ms) through ``budget``, one window of 4 frames at a time."""
    for i, ms in enumerate(frames):
        budget.observe(i, {"frame": ms})


def test_the_window_median_decides_so_one_slow_frame_sheds_nothing():
    log = []
    budget = FrameBudget(100.0, [Step("a", 10.0, log=log)], window=4, first=0)
    run(budget, [90, 90, 500, 90])
    assert log == [] and budget.window == {"frame": 90}
    run(budget, [90, 120, 130, 110])
    assert log == [("shed", "a")] and budget.events == [(4, "shed", "a")]


def test_shed_work_comes_back_last_shed_first_only_with_room_to_spare():
    log = []
    budget = FrameBudget(100.0, [Step("a", 10.0, log=log), Step("b", 20.0, log=log)], window=1, first=0)
    budget.observe(0, {"frame": 125.0})  # 25 over: both
    assert log == [("shed", "a"), ("shed", "b")]
    # Under budget, but b's 20 ms back would leave the frame above the margin: kept shed.
    budget.observe(1, {"frame": RESTORE_MARGIN * 100.0 - 19.0})
    assert log[2:] == []
    budget.observe(2, {"frame": RESTORE_MARGIN * 100.0 - 20.0})
    assert log[2:] == [("restored", "b")]
    budget.observe(3, {"frame": 50.0})  # one step a window: now a
    assert log[3:] == [("restored", "a")]
    assert [e[1:] for e in budget.events] == [("shed", "a"), ("shed", "b"), ("restored", "b"), ("restored", "a")]


def test_a_step_taken_back_and_shed_again_stays_shed():
    log = []
    budget = FrameBudget(100.0, [Step("a", 10.0, log=log)], window=1, first=0)
    for ms in (110.0, 50.0, 110.0, 50.0, 50.0):  # a loop near its budget: one round trip, then no flapping
        budget.observe(0, {"frame": ms})
    assert log == [("shed", "a"), ("restored", "a"), ("shed", "a")]


def test_frames_before_the_first_window_are_not_judged():
    log = []
    budget = FrameBudget(100.0, [Step("a", 10.0, log=log)], window=2, first=5)
    for i in range(5):
        budget.observe(i, {"frame": 1000.0})  # compiling kernels
    assert log == []
    budget.observe(5, {"frame": 1000.0})
    budget.observe(6, {"frame": 1000.0})
    assert log == [("shed", "a")] and budget.events == [(7, "shed", "a")]
