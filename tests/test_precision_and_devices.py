"""Mixed precision, the machine-dependent defaults, and a training step that never waits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from helpers.bf16_bounds import FLOAT32_NOISE, bf16_relative_bound, on_bf16_grid
from helpers.tiny_module import crack_batch, crack_loader, tiny_module
from helpers.volume_nodes import record_volume_nodes

from crackseg.errors import ConfigError
from crackseg.models import precision
from crackseg.models.lit_segdec import SegDecModule
from crackseg.models.module_settings import SpeedSettings
from crackseg.runs import hardware


def _losses(precision: str, steps: int = 6) -> tuple[list[float], SegDecModule]:
    """The first training losses on one batch, the network running in ``precision``."""
    torch.manual_seed(0)
    module = tiny_module()
    module.log = lambda *args, **kwargs: None
    module.loss_weights = lambda: (1.0, 0.1)
    optimizer = module.configure_optimizers()
    batch = crack_batch()
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.training_step(batch, 0)
        assert loss.dtype == torch.float32  # losses stay in float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, module


def test_first_bf16_loss_lies_within_what_bf16_rounds_of_float32():
    """The first loss (same weights, same batch) differs from float32's: by more than float32
    alone can (bf16 ran), by less than the first-order bound of bf16's rounding through the
    network's depth (tests/helpers/bf16_bounds.py). The losses are float32 numbers, not bf16
    ones cast up (the loss itself is computed in float32), and bf16 trains as float32 does:
    both halve the loss within six steps. After the first step the two trajectories follow
    different weights, so only the first loss is compared."""
    float32, _ = _losses("32")
    bf16, module = _losses("bf16")
    gap = abs(bf16[0] - float32[0]) / float32[0]
    assert FLOAT32_NOISE < gap <= bf16_relative_bound(module), gap
    assert not all(on_bf16_grid(loss) for loss in bf16)
    assert float32[-1] < 0.5 * float32[0]
    assert bf16[-1] < 0.5 * bf16[0]


def _one_epoch_trainer(callback: pl.Callback, **settings) -> pl.Trainer:
    """A Trainer for one epoch that writes nothing (no logger, checkpoint, bar or summary,
    unless ``settings`` ask)."""
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(max_epochs=1, callbacks=[callback], **(quiet | settings))


class _NoSync:
    """Fails the test on any call that makes the host wait for the device's result."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}
        for name in self.NAMES:

            def refuse(*args, _name=name, **kwargs):
                raise AssertionError(f"Tensor.{_name} in the training step waits for the device")

            setattr(torch.Tensor, name, refuse)
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


class _NoSyncInSteps(pl.Callback):
    """Watches every training batch, from its start to its end (backward and the optimiser
    step included)."""

    def __init__(self) -> None:
        self.guard = _NoSync()
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.guard.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.guard.__exit__(None, None, None)
        self.steps += 1

    def on_exception(self, trainer, pl_module, exception):
        self.guard.__exit__(None, None, None)  # the worker's later tests keep Tensor whole


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no")
def test_the_training_step_never_waits_for_the_device():
    """On a GPU a value read back from a tensor stalls the queue every step; here every such
    read is refused while Lightning runs the step, its logging, backward and the update."""
    module = tiny_module()
    watch = _NoSyncInSteps()
    trainer = _one_epoch_trainer(watch, limit_val_batches=0)
    trainer.fit(module, crack_loader())
    assert watch.steps == 2
    assert trainer.callback_metrics["train/loss"] > 0


class _Dtypes(pl.Callback):
    """Records, per stage, the dtype of the network's first convolution's output and of
    the training loss, as Lightning's precision plugin runs them."""

    def __init__(self, module: SegDecModule) -> None:
        self.trainer: pl.Trainer | None = None
        self.seen: dict[str, set[torch.dtype]] = {}
        conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(self._record)

    def _record(self, conv, inputs, output) -> None:
        self.seen.setdefault(self.trainer.state.stage.value, set()).add(output.dtype)

    def setup(self, trainer, pl_module, stage) -> None:
        self.trainer = trainer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.setdefault("loss", set()).add(outputs["loss"].dtype)


def test_bf16_mixed_runs_the_network_in_bf16_in_every_stage_and_the_loss_in_float32():
    module = tiny_module()
    dtypes = _Dtypes(module)
    trainer = _one_epoch_trainer(dtypes, precision="bf16-mixed", num_sanity_val_steps=0)
    trainer.fit(module, crack_loader(), crack_loader())
    trainer.test(module, crack_loader(), verbose=False)
    bf16 = {torch.bfloat16}
    assert dtypes.seen == {"train": bf16, "validate": bf16, "test": bf16, "loss": {torch.float32}}


def test_auto_precision_is_bf16_only_where_the_cpu_computes_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve_precision("auto", "auto") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_precision("auto", "cpu") == "32-true"
    assert hardware.resolve_precision("32-true", "cpu") == "32-true"
    assert hardware.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("float16", ["16-mixed", "16"])
def test_float16_is_refused_off_a_gpu_where_lightning_would_train_bf16(monkeypatch, float16):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for accelerator in ("cpu", "auto"):
        with pytest.raises(ConfigError, match=f"trainer.precision={float16} needs a GPU"):
            hardware.resolve_precision(float16, accelerator)
    assert hardware.resolve_precision(float16, "gpu") == float16
    assert hardware.resolve_precision(float16, "mps") == float16  # Apple GPUs train float16
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware.resolve_precision(float16, "auto") == float16
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.resolve_precision(float16, "auto") == float16


def test_an_evaluation_takes_the_trained_precision_where_it_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert hardware.evaluation_precision("auto", "bf16-mixed", "auto") == "bf16-mixed"
    assert hardware.evaluation_precision("auto", None, "auto") == "32-true"  # this machine's
    assert hardware.evaluation_precision("bf16-mixed", "32-true", "cpu") == "bf16-mixed"  # typed
    # float16 weights off a GPU: float32, not the bf16 Lightning would turn 16-mixed into
    assert hardware.evaluation_precision("auto", "16-mixed", "auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.evaluation_precision("auto", "16-mixed", "auto") == "16-mixed"


def test_auto_precision_on_a_gpu_leaves_cuda_uninitialised_in_the_launching_process(
    monkeypatch,
):
    """A child process says whether the GPU computes in bf16: a trainer that forks its
    processes (strategy=ddp_fork, ddp_notebook) refuses to start where CUDA was initialised."""

    def initialises_cuda(*args, **kwargs):
        raise AssertionError("asked in the launching process")

    asked, answer = [], {}

    def child(command, **kwargs):
        asked.append(command)
        return subprocess.CompletedProcess(command, 0, answer["stdout"], "")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", initialises_cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", initialises_cuda)
    monkeypatch.setattr(precision.subprocess, "run", child)
    for stdout, chosen in (("1\n", "bf16-mixed"), ("0\n", "32-true"), ("", "32-true")):
        answer["stdout"] = stdout
        precision._ask_cuda_bf16.cache_clear()
        assert hardware.resolve_precision("auto", "auto") == chosen
        assert hardware.resolve_precision("auto", "gpu") == chosen
        assert asked.pop()[0] == sys.executable and not asked  # once: cached
    # crackseg-predict device=cuda:1 precision=auto asks of that GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    answer["stdout"] = "1\n"
    assert precision.native_precision("cuda", 1) == "bf16-mixed"
    assert "torch.cuda.set_device(1)" in asked.pop()[-1] and not asked
    assert precision.native_precision("cuda", 2) == "32-true" and not asked  # no such GPU
    precision._ask_cuda_bf16.cache_clear()


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
    for flags, native in (
        ("fpu avx512f avx512_bf16", True),
        ("fpu amx_bf16", True),
        ("fpu avx512f", False),
    ):
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
        precision.cpu_has_native_bf16.cache_clear()
        assert precision.cpu_has_native_bf16() is native
    precision.cpu_has_native_bf16.cache_clear()


def test_channels_last_auto_is_bf16_on_a_cpu_with_amx_only(monkeypatch):
    amx = ["avx512_bf16", "amx_bf16"]
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: amx)
    assert precision.use_channels_last("auto", "cpu", "bf16-mixed")
    assert not precision.use_channels_last("auto", "cpu", "32-true")
    assert not precision.use_channels_last("auto", "cuda", "bf16-mixed")  # not measured there
    assert not precision.use_channels_last(False, "cpu", "bf16-mixed")
    assert precision.use_channels_last(True, "cpu", "32-true")
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ["avx512_bf16"])
    assert not precision.use_channels_last("auto", "cpu", "bf16-mixed")  # slower there


class _Layouts(pl.Callback):
    """Whether the images of each training batch reach the network channels_last."""

    def __init__(self, module: SegDecModule) -> None:
        self.seen: set[bool] = set()
        first = module.net.stage1[0]
        first.register_forward_pre_hook(
            lambda _, args: self.seen.add(args[0].is_contiguous(memory_format=torch.channels_last))
        )


@pytest.mark.parametrize("run_precision", ["bf16-mixed", "32-true"])
def test_a_run_on_an_amx_cpu_trains_channels_last_in_bf16(monkeypatch, run_precision):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ["avx512_bf16", "amx_bf16"])
    module = tiny_module()
    assert module.speed.channels_last == "auto" and not module.channels_last
    layouts = _Layouts(module)
    trainer = _one_epoch_trainer(layouts, precision=run_precision, num_sanity_val_steps=0)
    trainer.fit(module, crack_loader(), crack_loader())
    bf16 = run_precision == "bf16-mixed"
    assert module.channels_last is bf16 and layouts.seen == {bf16}
    weight = module.net.volume[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) is bf16


@pytest.mark.parametrize("run_precision", ["bf16-mixed", "32-true"])
def test_model_volume_im2col_trains_the_volume_as_im2col(run_precision):
    """``model.volume_im2col=true``: every training step's volume convolution runs as
    ``thnn_conv2d`` (backward node ``SlowConv2DBackward0``), under bf16 autocast too, and the
    model summary, which runs the network under torch's FLOP counter (which once failed on
    that operator), counts it."""
    speed = SpeedSettings(volume_im2col=True)
    module = tiny_module(speed=speed)
    assert module.net.volume_im2col
    volume_nodes = record_volume_nodes(module.net)
    settings = {"precision": run_precision, "num_sanity_val_steps": 0}
    trainer = _one_epoch_trainer(pl.Callback(), enable_model_summary=True, **settings)
    trainer.fit(module, crack_loader(), crack_loader())
    assert set(volume_nodes) == {"SlowConv2DBackward0", "NoneType"}  # training, validation


@pytest.mark.parametrize(
    ("run_precision", "im2col_faster", "timed"),
    [("32-true", True, True), ("32-true", False, True), ("bf16-mixed", True, False)],
)
def test_model_volume_im2col_auto_keeps_the_kernel_timed_faster_at_the_first_batch(
    monkeypatch, tmp_path, run_precision, im2col_faster, timed
):
    """``model.volume_im2col=auto`` (the default) times the two kernels once, at the first
    training batch's shape, in float32 only, and every step runs the faster; the checkpoint
    carries the choice, which a loaded module takes instead of timing again."""
    from crackseg.models import volume_kernel
    from crackseg.models.checkpoint import load_module
    from crackseg.models.volume_kernel import VolumeKernelTiming

    shapes = []

    def timing(conv, shape, layout):
        shapes.append(tuple(shape))
        return VolumeKernelTiming(tuple(shape), 2.0, 1.0 if im2col_faster else 3.0)

    monkeypatch.setattr(volume_kernel, "time_volume_kernels", timing)
    module = tiny_module()
    assert module.speed.volume_im2col == "auto" and not module.net.timed_volume_im2col
    volume_nodes = record_volume_nodes(module.net)
    settings = {"precision": run_precision, "num_sanity_val_steps": 0}
    trainer = _one_epoch_trainer(pl.Callback(), **settings)
    trainer.fit(module, crack_loader(), crack_loader())
    assert shapes == ([(2, 16, 8, 16)] if timed else [])  # once, the volume's input
    im2col = im2col_faster and timed
    step_node = "SlowConv2DBackward0" if im2col else "ConvolutionBackward0"
    assert module.net.timed_volume_im2col is im2col and not module.net.volume_im2col
    assert volume_nodes == [step_node, step_node, "NoneType", "NoneType"]

    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert torch.load(tmp_path / "run.ckpt", weights_only=False)["volume_im2col"] is im2col
    loaded = load_module(tmp_path / "run.ckpt")
    assert loaded.net.timed_volume_im2col is im2col and loaded.volume_kernel.chosen
    shapes.clear()
    loaded.on_train_batch_start({"image": torch.zeros(2, 3, 64, 128)}, 0)  # a resumed run
    assert shapes == [] and loaded.net.timed_volume_im2col is im2col


def test_under_ddp_every_process_takes_the_first_processs_timed_kernel(monkeypatch):
    """The other processes do not time: they take what the first one broadcasts (here
    im2col), so every process computes the volume alike."""
    from types import SimpleNamespace

    from crackseg.models import volume_kernel

    monkeypatch.setattr(volume_kernel, "time_volume_kernels", pytest.fail)
    broadcast = []

    def from_first_process(value, src):
        broadcast.append((value, src))
        return True

    rank1 = SimpleNamespace(
        precision="32-true",
        is_global_zero=False,
        world_size=2,
        strategy=SimpleNamespace(broadcast=from_first_process),
    )
    module = tiny_module()
    module._trainer = rank1
    module.on_train_batch_start({"image": torch.zeros(2, 3, 64, 128)}, 0)
    assert broadcast == [(False, 0)] and module.net.timed_volume_im2col


@pytest.mark.parametrize("saved", [False, True, None])
def test_an_auto_run_resumed_from_a_checkpoint_saved_before_auto_keeps_its_kernel(saved):
    """A checkpoint written before ``model.volume_im2col=auto`` (its setting true or false,
    or none before the option) has no timed choice: the resumed run goes on with the kernel
    it trained with, instead of timing and changing kernels halfway."""
    module = tiny_module()
    speed = {} if saved is None else {"volume_im2col": saved}
    module.on_load_checkpoint({"hyper_parameters": {"speed": speed}})
    assert module.volume_kernel.chosen and module.net.volume_im2col is (saved is True)
    assert not module.net.timed_volume_im2col
    fresh = tiny_module()
    fresh.on_load_checkpoint({"hyper_parameters": {"speed": {"volume_im2col": "auto"}}})
    assert not fresh.volume_kernel.chosen  # saved by an auto run before its first batch


def test_evaluation_batch_size_and_pinned_memory_follow_the_device(tmp_path):
    from crackseg.data.data_settings import InputSize, LoaderSettings, SourceSettings
    from crackseg.data.datamodule import CrackDataModule, eval_batch_size

    assert eval_batch_size("auto", 4, "cpu", 640 * 232) == 1
    assert eval_batch_size("auto", 4, "cpu", 128 * 128) == 8
    assert eval_batch_size("auto", 4, "cpu", 32 * 32) == 16
    assert eval_batch_size("auto", 4, "cuda", 640 * 232) == 16
    assert eval_batch_size(None, 4, "cuda", 1) == 4
    assert eval_batch_size(8, 4, "cpu", 1) == 8
    data = CrackDataModule(
        SourceSettings(str(tmp_path)), InputSize(3, 640, 232), loader=LoaderSettings(batch_size=4)
    )
    assert data.eval_batch_size == 1  # no trainer: the CPU, where 640 x 232 takes batches of 1

    class OnGpu:
        global_rank = 0

        class strategy:  # noqa: N801
            root_device = torch.device("cuda", 0)

    data.trainer = OnGpu()
    assert data.eval_batch_size == 16
    loader = data._loader(list(range(3)), 2)
    assert loader.pin_memory is True


def test_a_bf16_run_trains_tests_and_says_so(tmp_path, tiny_data_dir):
    from conftest import run_tiny

    result = run_tiny(tmp_path, tiny_data_dir, "trainer.precision=bf16-mixed")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed"
    assert 0 <= metrics["image_auc"] <= 1 and 0 <= metrics["dice_mean"] <= 1
    assert "| Precision " in (tmp_path / "report.md").read_text()
    assert "bf16-mixed" in next(
        line for line in (tmp_path / "report.md").read_text().splitlines() if "| Precision" in line
    )


def test_a_compiled_network_trains_and_its_weights_score_the_same_uncompiled(
    tmp_path, tiny_data_dir
):
    """``model.compile`` compiles the network in place for training: its checkpoints keep the
    plain keys, and crackseg-eval (not compiled) scores the test split as the compiled
    test step did."""
    from conftest import eval_tiny, run_tiny

    run = tmp_path / "run"
    settings = ("model.compile=default", "trainer.max_epochs=1", "trainer.precision=32-true")
    result = run_tiny(run, tiny_data_dir, *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = next((run / "checkpoints").glob("best*.ckpt"))
    weights = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert "net.volume.0.weight" in weights and not any("_orig_mod" in k for k in weights)

    evaluated = tmp_path / "eval"
    result = eval_tiny(checkpoint, evaluated, tiny_data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    trained, scored = (json.loads((d / "metrics.json").read_text()) for d in (run, evaluated))
    for key in ("image_auc", "image_ap", "tp", "fp", "tn", "fn", "dice_mean"):
        assert scored[key] == pytest.approx(trained[key], abs=1e-4), key


def test_deterministic_training_of_the_full_resolution_head_is_refused_on_a_gpu(monkeypatch):
    """Its bilinear upsampling has no deterministic CUDA backward: torch would raise at the
    first step. On the CPU, and with deterministic=warn, the run goes on."""
    from omegaconf import OmegaConf

    from crackseg.errors import ConfigError

    def config(deterministic, accelerator="auto", full_resolution=True):
        return OmegaConf.create(
            {
                "trainer": {"deterministic": deterministic, "accelerator": accelerator},
                "model": {"net": {"full_resolution": full_resolution}},
            }
        )

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="use trainer.deterministic=warn"):
        hardware.check_deterministic(config(True))
    with pytest.raises(ConfigError, match="no deterministic CUDA backward"):
        hardware.check_deterministic(config(True, accelerator="gpu"))
    hardware.check_deterministic(config("warn"))
    hardware.check_deterministic(config(True, full_resolution=False))
    hardware.check_deterministic(config(True, accelerator="cpu"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    hardware.check_deterministic(config(True))


def test_the_callbacks_predict_in_the_runs_precision():
    """The validation images, Dice panels and weak ranking show what the bf16 test scored."""
    from crackseg.callbacks import forward_as_run

    module = tiny_module()
    seen = []
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    images = crack_batch(2)["image"]
    for run_precision, dtype in (("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)):
        trainer = _one_epoch_trainer(pl.Callback(), precision=run_precision)
        scores, seg = forward_as_run(trainer, module, images)
        assert seen.pop() == dtype
        assert scores.dtype == seg.dtype == torch.float32 and seg.shape == (2, 1, 64, 128)


def test_the_callbacks_run_a_compiled_network_eagerly():
    """Their batches have sizes of their own: through the compiled network each would compile
    it again (minutes on the paper's network), for a few pictures."""
    from torch._dynamo.testing import CompileCounter

    from crackseg.callbacks import forward_as_run

    module = tiny_module()
    compiles = CompileCounter()
    module.net.compile(backend=compiles)
    trainer = _one_epoch_trainer(pl.Callback(), precision="32-true")
    images = crack_batch(3)["image"]
    scores, seg = forward_as_run(trainer, module, images)
    assert compiles.frame_count == 0
    assert seg.shape == (3, 1, 64, 128)
    module.net(images)  # the compiled network itself still compiles
    assert compiles.frame_count > 0


def test_freed_memory_is_kept_for_reuse_with_glibc_only(monkeypatch):
    from crackseg.runs import allocator

    glibc = allocator.platform.libc_ver()[0] == "glibc" and allocator.platform.system() == "Linux"
    assert allocator.keep_freed_memory() is glibc
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("trained", ["bf16-mixed", "32-true"])
def test_a_run_resumed_by_its_folder_keeps_the_precision_it_trained_in(tmp_path, trained):
    """resume=RUN_DIR made the saved ``trainer.precision: auto`` concrete anew: on a machine
    without bf16 a bf16 run went on in float32 (and the reverse), without a word."""
    from omegaconf import OmegaConf

    from crackseg.runs.resume import _started_config, resolve_machine_settings

    (tmp_path / ".hydra").mkdir()
    started = {"trainer": {"precision": "auto", "accelerator": "cpu"}, "seed": 0}
    OmegaConf.save(OmegaConf.create(started), tmp_path / ".hydra" / "config.yaml")
    checkpoint = tmp_path / "last.ckpt"
    as_trained = {**started, "trainer": {"precision": trained, "accelerator": "cpu"}}
    run_config = OmegaConf.to_yaml(OmegaConf.create(as_trained))
    torch.save({"hyper_parameters": {"run_config": run_config}}, checkpoint)
    cfg = _started_config(tmp_path, checkpoint)
    resolve_machine_settings(cfg)
    assert cfg.trainer.precision == trained
    assert cfg.resume == str(tmp_path)
    assert _started_config(tmp_path, None).trainer.precision == "auto"  # nothing trained yet
