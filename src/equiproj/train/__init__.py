r"""The training loop shared by every experiment: seeding, devices, checkpoints, resume, DDP.

:func:`fit` trains a model on ``task loss + regulariser penalty`` for a fixed number of
optimisation steps and keeps everything needed to repeat or continue the run in one folder:

``out_dir/checkpoint.pt``
    Written atomically every ``checkpoint_every`` steps: weights, optimiser, scheduler, gradient
    scaler, step, epoch and position in the epoch, the random states of every rank, the history
    and the hash of the configuration. Calling :func:`fit` again with the same folder and the same
    configuration continues from there, and ends with the weights of an uninterrupted run.
``out_dir/result.json``
    Written atomically at the end: configuration, final metrics, history, timings, device. A
    folder with a result of the same configuration is not trained again.
``out_dir/model.pt``
    The final ``state_dict`` of the model.

Only rank 0 writes. See ``docs/training.md`` for the full story.

Examples
--------
>>> import tempfile, torch
>>> from equiproj import ProjectionRegulariser
>>> from equiproj.groups import cyclic
>>> from equiproj.nn import RepLinear
>>> from equiproj.train import TrainConfig, fit, seed_everything
>>> G = cyclic(4)
>>> _ = seed_everything(0)
>>> model = RepLinear(G.regular(), G.regular())
>>> x = torch.randn(64, 4); y = x.roll(1, dims=1)          # an equivariant target
>>> reg = ProjectionRegulariser(model, lambda_perp=1e-2)
>>> mse = lambda m, batch: torch.nn.functional.mse_loss(m(batch[0]), batch[1])
>>> config = TrainConfig(steps=20, batch_size=16, lr=0.05, log_every=5, device="cpu")
>>> with tempfile.TemporaryDirectory() as out:
...     result = fit(model, (x, y), config, mse, out, regulariser=reg, progress=False)
>>> result["status"], result["steps"], len(result["history"]["train"])
('finished', 20, 4)
>>> result["history"]["train"][-1]["loss"] < result["history"]["train"][0]["loss"]
True
"""

from ._config import TrainConfig
from ._distributed import DeviceUnavailableError, device_description, is_main_process, select_device
from ._loop import fit, load_best_model
from ._results import BEST_MODEL_NAME, CHECKPOINT_NAME, MODEL_NAME, RESULT_NAME, load_result, record_result, result_row
from ._state import RunFolderError, StopTraining, TrainState, seed_everything

__all__ = [
    "TrainConfig", "TrainState", "StopTraining", "fit", "seed_everything", "select_device",
    "is_main_process", "record_result", "result_row", "load_result", "load_best_model",
    "CHECKPOINT_NAME", "RESULT_NAME", "MODEL_NAME", "BEST_MODEL_NAME", "DeviceUnavailableError", "RunFolderError",
    "device_description",
]
