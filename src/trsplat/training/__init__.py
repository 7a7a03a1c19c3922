"""Training: the loop and its hook points, evaluation, and the run folder."""

from trsplat.training.distributed import SINGLE, World, close_world, init_world
from trsplat.training.evaluation import active_sh_degree, evaluate, save_render_pair
from trsplat.training.hooks import Hook, ProgressBar
from trsplat.training.rundir import RunDir
from trsplat.training.trainer import Trainer, load_training_scene, make_residual_fn, prepare, resume, train

__all__ = ["Hook", "ProgressBar", "RunDir", "SINGLE", "Trainer", "World", "active_sh_degree", "close_world",
           "evaluate", "init_world", "load_training_scene", "make_residual_fn", "prepare", "resume", "save_render_pair",
           "train"]
