"""Presets resolved with command-line overrides."""

from pathlib import Path

import pytest
import torch

from online_denoise.cli import _parser
from online_denoise.config import prior_path, resolve
from online_denoise.errors import UserError


def resolved(*flags):
    args = _parser().parse_args(["bench", "--preset", "cpu", *flags])
    return resolve(args, torch.device("cpu"))


def test_the_cpu_preset_as_shipped():
    run = resolved()
    m = run.model
    assert (m.width, m.depth, m.output, m.kernel_size, m.scales, m.in_channels) == (16, 5, "kpn", 5, 4, 9)
    assert run.train.schedule == "inline" and run.spp == 2
    assert prior_path(run, "auto") is not None
    assert run.pair == "mean" and run.session_config("cpu", 16).pair == "mean"
    assert run.history == 16 and run.session_config("cpu", 16).temporal.enabled
    assert run.session_config("cpu", 16).budget_batch == 6 and run.train.batch == 8
    # An explicit batch, or no frame budget, keeps the batch whatever the frame time.
    assert resolved("--batch", "8").session_config("cpu", 16).budget_batch is None
    assert resolved("--rr-depth", "0").budget_batch is None


@pytest.mark.parametrize("flags", [(), ("--firefly-clamp", "0"), ("--firefly-clamp", "8"), ("--demodulate", "0.05"),
                                   ("--no-demod-mix",)])
def test_the_shipped_prior_fits_the_cpu_preset_whatever_its_firefly_clamp_or_demodulation(flags, capsys):
    from online_denoise.cli import _starting_weights

    args = _parser().parse_args(["bench", "--preset", "cpu", *flags])
    run = resolve(args, torch.device("cpu"))
    prior = _starting_weights(args, run)
    assert prior is not None and prior.model_config == run.model and "does not fit" not in capsys.readouterr().err
    args = _parser().parse_args(["bench", "--preset", "cpu", "--features", "color,albedo"])
    assert _starting_weights(args, resolve(args, torch.device("cpu"))) is None
    assert "does not fit" in capsys.readouterr().err


def test_a_run_with_more_features_starts_from_the_prior_widened_and_a_run_with_fewer_does_not(capsys):
    from online_denoise.cli import _starting_weights
    from online_denoise.model import build_model

    args = _parser().parse_args(["bench", "--preset", "cpu", "--features", "color,albedo,normal,specular"])
    run = resolve(args, torch.device("cpu"))
    prior = _starting_weights(args, run)
    assert prior is not None and prior.model_config == run.model and prior.spec == run.features
    assert "widened with zero weights for specular" in capsys.readouterr().err
    build_model(run.model).load_state_dict(prior.state_dict)  # the session's network takes the weights as they are
    args = _parser().parse_args(["bench", "--preset", "cpu", "--features", "color,normal"])
    assert _starting_weights(args, resolve(args, torch.device("cpu"))) is None
    assert "does not fit" in capsys.readouterr().err


def test_pair_flag_overrides_the_preset():
    assert resolved("--pair", "both").session_config("cpu", 16).pair == "both"
    args = _parser().parse_args(["bench", "--preset", "gpu"])
    assert resolve(args, torch.device("cpu")).pair == "both"


def test_history_flag_sets_temporal_reuse():
    assert resolved("--history", "4").session_config("cpu", 16).temporal.history == 4
    assert not resolved("--history", "1").session_config("cpu", 16).temporal.enabled
    assert resolved("--history", "6").to_dict()["history"] == 6
    with pytest.raises(UserError, match="--history 0"):
        resolved("--history", "0")


def test_the_metal_blend_is_on_in_the_cpu_preset_for_pairs_and_the_flag_turns_it_off():
    from online_denoise.blend import InputBlend

    assert resolved().session_config("cpu", 16).blend == InputBlend()
    assert resolved("--no-metal-blend").session_config("cpu", 16).blend is None
    assert not resolved("--preset", "gpu").metal_blend
    assert resolved("--target", "blindspot").session_config("cpu", 16).blend is None  # one render: no pair to estimate from


def test_metals_follow_their_reflections_in_the_cpu_preset_and_the_flag_sets_or_refuses_it():
    assert resolved().session_config("cpu", 16).temporal.reflect_history == 8
    assert resolved("--reflect-history", "0").session_config("cpu", 16).temporal.reflect_history == 0
    assert resolved("--reflect-history", "4").to_dict()["reflect_history"] == 4
    with pytest.raises(UserError, match="--reflect-history -1"):
        resolved("--reflect-history", "-1")


def test_the_history_feature_adds_one_input_channel_and_bad_feature_lists_are_refused():
    run = resolved("--features", "color,albedo,normal,history")
    assert run.model.in_channels == 10 and run.features.features[-1] == "history"
    for bad in ("albedo,color", "color,depth", "color,history,history"):
        with pytest.raises(UserError, match=f"--features {bad}: expected 'color' followed by any of"):
            resolved("--features", bad)


def test_firefly_clamp_flag():
    assert resolved().features.firefly == 4.0
    assert resolved("--firefly-clamp", "0").features.firefly == 0.0
    assert resolved("--firefly-clamp", "6").to_dict()["features"]["firefly"] == 6.0
    for bad in ("0.5", "-2", "nan"):
        with pytest.raises(UserError, match="--firefly-clamp: firefly ratio .* expected 0 \\(off\\) or a number >= 1"):
            resolved("--firefly-clamp", bad)


def test_aux_spp_from_the_preset_or_the_flag(monkeypatch):
    import renderer

    assert resolved().aux_spp == 16 and resolved().to_dict()["aux_spp"] == 16
    # Over the frame budget it falls to 8, unless given explicitly.
    assert resolved().session_config("cpu", 16).budget_aux_spp == 8
    assert resolved("--aux-spp", "4").aux_spp == 4 and resolved("--aux-spp", "4").budget_aux_spp is None
    assert resolved("--rr-depth", "0").budget_aux_spp is None
    gpu = resolve(_parser().parse_args(["bench", "--preset", "gpu"]), torch.device("cpu"))
    assert gpu.aux_spp is None  # the renders' own spp
    with pytest.raises(UserError, match="--aux-spp 0: expected a positive sample count"):
        resolved("--aux-spp", "0")
    # ... and it reaches the renderer.
    from online_denoise.cli import _renderer

    seen = {}
    monkeypatch.setattr(renderer, "Renderer", lambda config: seen.setdefault("config", config))
    args = _parser().parse_args(["bench", "--preset", "cpu", "--aux-spp", "8"])
    _renderer(args, 2, 0, resolve(args, torch.device("cpu")))
    assert (seen["config"].spp, seen["config"].aux_spp) == (2, 8)


def test_target_clip_flag():
    assert resolved().train.target_clip == 64.0  # the cpu preset's
    assert resolved("--target-clip", "0").train.target_clip is None
    assert resolved("--target-clip", "16").to_dict()["train"]["target_clip"] == 16.0
    # another loss drops the preset's bound, which is the hdr loss's; asked for by name, it is refused
    assert resolved("--loss", "l2").train.target_clip is None
    with pytest.raises(UserError, match="--target-clip bounds the hdr loss's relative error; --loss l1 has none"):
        resolved("--loss", "l1", "--target-clip", "8")
    for bad in ("0.5", "-1", "inf"):
        with pytest.raises(UserError, match=f"--target-clip {bad}: expected 0 \\(off\\) or a ratio of at least 1"):
            resolved("--target-clip", bad)


def test_spike_clip_flag():
    assert resolved().train.spike_ratio == 4.0
    assert resolved("--spike-clip", "0").train.spike_ratio is None
    assert resolved("--spike-clip", "10").to_dict()["train"]["spike_ratio"] == 10.0
    for bad in ("0.5", "-1", "inf"):
        with pytest.raises(UserError, match=f"--spike-clip {bad}: expected 0 \\(off\\) or a ratio of at least 1"):
            resolved("--spike-clip", bad)


def test_ema_flag():
    assert resolved().train.ema is None
    assert resolved("--ema", "0").train.ema is None
    assert resolved("--ema", "0.9").to_dict()["train"]["ema"] == 0.9
    for bad in ("1", "-0.1", "nan"):
        with pytest.raises(UserError, match=f"--ema {bad}: expected 0 \\(off\\) or a decay per step below 1"):
            resolved("--ema", bad)


def test_crop_focus_flag():
    assert resolved().train.crop_focus == 1.0  # the cpu preset centres every crop by noise
    assert resolved("--preset", "paper").train.crop_focus == 0.0
    assert resolved("--crop-focus", "0.25").to_dict()["train"]["crop_focus"] == 0.25
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(UserError, match=f"--crop-focus {bad}: expected a share of the crops between 0 and 1"):
            resolved("--crop-focus", bad)


def test_learning_rate_schedule_flags():
    assert resolved().train.lr_end is None  # the presets keep one rate
    train = resolved("--lr", "2e-3", "--lr-end", "4e-4", "--lr-decay-steps", "150").train
    assert (train.lr, train.lr_end, train.lr_decay_steps) == (2e-3, 4e-4, 150)
    for flag, bad, expected in (("--lr-end", "0", "a positive learning rate"),
                                ("--lr-end", "-0.001", "a positive learning rate"),
                                ("--lr-decay-steps", "0", "at least 1 step")):
        with pytest.raises(UserError, match=f"^{flag} {bad}: expected {expected}$"):
            resolved(flag, bad)


@pytest.mark.parametrize("flag", ["--batch", "--crop"])
def test_training_size_flags_name_themselves_when_bad(flag):
    with pytest.raises(UserError, match=f"^{flag} 0: expected a positive number$"):
        resolved(flag, "0")


def test_russian_roulette_depth_from_the_preset_or_the_flag():
    run = resolved()  # auto: the cpu preset switches to depth 3 when over its 250-ms frame budget
    assert (run.rr_depth, run.frame_budget_ms) == (3, 250.0)
    assert run.session_config("cpu", 16).frame_budget_ms == 250.0 and run.to_dict()["rr_depth"] == 3
    assert (resolved("--rr-depth", "5").rr_depth, resolved("--rr-depth", "5").frame_budget_ms) == (5, None)
    assert resolved("--rr-depth", "0").rr_depth is None  # the scene's own, always
    gpu = resolve(_parser().parse_args(["bench", "--preset", "gpu"]), torch.device("cpu"))
    assert (gpu.rr_depth, gpu.frame_budget_ms) == (None, None)
    for bad in ("-1", "deep"):
        with pytest.raises(UserError, match=f"--rr-depth {bad}"):
            resolved("--rr-depth", bad)


def test_network_flags_override_single_fields():
    run = resolved("--width", "24", "--scales", "4", "--kernel-size", "7")
    assert (run.model.width, run.model.scales, run.model.kernel_size, run.model.depth) == (24, 4, 7, 5)
    direct = resolved("--head", "direct")
    assert direct.model.output == "direct" and direct.model.scales == 1  # a direct head has no kernel scales


def test_schedule_and_compile_flags():
    run = resolved("--train-schedule", "thread", "--compile", "infer")
    assert run.train.schedule == "thread"
    assert run.precision.compile == "infer" and run.precision.compile_mode == "default"
    assert resolved("--compile", "all", "--cuda-graphs").precision.compile_mode == "reduce-overhead"


def test_compile_without_a_cpu_compiler_is_a_user_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="g\\+\\+"):
        resolved("--compile", "infer")


def test_cuda_graphs_need_compile():
    with pytest.raises(UserError, match="--cuda-graphs"):
        resolved("--cuda-graphs")


def test_impossible_network_is_a_user_error():
    with pytest.raises(UserError, match="--scales"):
        resolved("--scales", "6")  # more scales than max-pools


def test_train_graph_flag_needs_cuda_and_picks_bf16(monkeypatch):
    from online_denoise import precision

    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: False)  # a GPU without bf16: auto is fp16
    with pytest.raises(UserError, match="--train-graph: CUDA graphs need a CUDA device"):
        resolved("--train-graph")

    def on_cuda(*flags):  # resolving touches no GPU, so this runs anywhere
        return resolve(_parser().parse_args(["bench", "--preset", "gpu", *flags]), torch.device("cuda"))

    run = on_cuda("--train-graph")
    assert run.train.graph and run.precision.dtype == "bf16"
    assert not on_cuda().train.graph and on_cuda().precision.dtype == "fp16"
    assert on_cuda("--train-graph", "--precision", "fp32").precision.dtype == "fp32"
    with pytest.raises(UserError, match="use --precision bf16"):
        on_cuda("--train-graph", "--precision", "fp16")
    with pytest.raises(UserError, match="--compile"):
        on_cuda("--train-graph", "--compile", "all")
    with pytest.raises(UserError, match="--target gr2r"):
        on_cuda("--train-graph", "--target", "gr2r")


def test_auto_precision_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch):
    from online_denoise import precision

    for native, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(precision, "cuda_has_bf16", lambda native=native: native)
        chosen = precision.choose_precision("auto", torch.device("cuda"))
        assert chosen.dtype == expected and chosen.needs_loss_scaling == (expected == "fp16")


def test_demodulate_flag_sets_the_spec_and_keeps_the_prior():
    assert resolved("--demodulate", "0.05").features.demodulate == 0.05  # the prior: the test above
    with pytest.raises(UserError, match="--demodulate"):
        resolved("--demodulate", "2")
    with pytest.raises(UserError, match="--demodulate: the kernels of the kpn head"):
        resolved("--demodulate", "0.05", "--head", "direct")


def test_the_cpu_preset_mixes_in_demodulated_filtering_unless_told_not_to_or_demodulating_everywhere():
    assert resolved().model.demod_mix and resolved().model.out_channels == 5 * 5 + 2
    assert not resolved("--no-demod-mix").model.demod_mix
    assert not resolved("--demodulate", "0.05").model.demod_mix  # full demodulation replaces the mix
    assert not resolved("--head", "direct").model.demod_mix
    with pytest.raises(UserError, match="--demod-mix: the kpn head"):
        resolved("--demod-mix", "--head", "direct")
    with pytest.raises(UserError, match="pick one"):
        resolved("--demod-mix", "--demodulate", "0.05")


def _train_prior_script_args() -> list[str]:
    """The flags scripts/train_prior.sh passes to ``online-denoise train``, without the caller's "$@"."""
    import shlex

    text = (Path(__file__).parent.parent / "scripts" / "train_prior.sh").read_text()
    command = text[text.index("online-denoise train"):].replace("\\\n", " ").split("\n")[0]
    return [a for a in shlex.split(command)[1:] if a != "$@"]


def test_the_prior_script_reproduces_the_shipped_prior():
    """Anyone rerunning scripts/train_prior.sh gets the shipped prior's recipe, whatever the preset has gained.

    A training setting the checkpoint does not record was added after it was trained, so the script
    must keep it at its off state; the preset's target clip, added later, was the case that slipped.
    """
    import dataclasses

    from online_denoise.denoiser import load_checkpoint
    from online_denoise.trainer import TrainConfig

    args = _parser().parse_args(_train_prior_script_args())
    run = resolve(args, torch.device("cpu"))
    prior = load_checkpoint(prior_path(run, "auto"))
    meta = prior.meta
    assert Path(args.out) == Path("online_denoise/priors/cpu.pt")
    assert prior.model_config == run.model and prior.spec == run.features
    recorded, now = meta["train_config"], dataclasses.asdict(run.train)
    defaults = dataclasses.asdict(TrainConfig())
    for key, value in now.items():
        expected = recorded[key] if key in recorded else defaults[key]
        assert value == expected, key
    offline = meta["offline"]
    assert args.scene.split(",") == offline["scenes"] and "cornell-box" not in offline["scenes"]
    assert (args.frames_per_scene, args.steps, run.spp, list(run.res), args.seed) == \
        (offline["frames_per_scene"], offline["steps"], offline["spp"], offline["res"], offline["seed"])


def test_restarted_pixels_get_more_samples_in_the_cpu_preset_and_the_flag_sets_or_refuses_it():
    assert resolved().session_config("cpu", 16).temporal.topup_spp == 6
    assert resolved("--topup-spp", "0").session_config("cpu", 16).temporal.topup_spp == 0
    assert resolved("--topup-spp", "3").to_dict()["topup_spp"] == 3
    assert resolved("--history", "1").session_config("cpu", 16).temporal.topup_spp == 0  # no reuse, no restarts
    assert resolved("--preset", "gpu").topup_spp == 0
    with pytest.raises(UserError, match="--topup-spp -2"):
        resolved("--topup-spp", "-2")
