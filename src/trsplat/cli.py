"""The ``trsplat`` command: train, eval, render, export, view, compare, make-scene, bench."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import types
import typing
from pathlib import Path

from trsplat.config import DEFAULT_RECIPE, RECIPES, TrainConfig, field_default
from trsplat.errors import Terminated, TrsplatError


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ("data", "out"),
                         recipe: str | None = None) -> None:
    """One ``--option`` per leaf of :class:`TrainConfig`, typed from its annotation, with the help
    text of its field metadata (allowed values are checked by :meth:`TrainConfig.validate`); the
    help of an option that ``recipe`` sets names the recipe's value too."""
    recipe_values = RECIPES[recipe] if recipe else {}
    for f, owner, _ in TrainConfig().leaves():
        if f.name in skip:
            continue
        default = field_default(f)
        flag = "--" + f.name.replace("_", "-")
        hint = typing.get_type_hints(type(owner))[f.name]
        help_text = f.metadata.get("help") or f.name.replace("_", " ")
        if f.metadata.get("choices"):
            help_text += f": {', '.join(f.metadata['choices'])}"
        if f.name in recipe_values:
            help_text += f" (default: {recipe_values[f.name]} in the default recipe {recipe}, else {default})"
        else:
            help_text += f" (default: {default})"
        # no default in the namespace: only the flags given appear (what --resume may change)
        kwargs = dict(default=argparse.SUPPRESS, help=help_text)
        inner = next(a for a in typing.get_args(hint) if a is not type(None)) if isinstance(hint, types.UnionType) else None
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif list[int] in (hint, inner):
            parser.add_argument(flag, type=_parse_int_list, **kwargs)
        elif inner is not None:
            parser.add_argument(flag, type=_optional(inner), **kwargs)
        else:
            parser.add_argument(flag, type=hint, **kwargs)


def _flags(options: dict[str, object]) -> list[str]:
    """``{"densify": "adc", "lpips": False}`` -> ``["--densify adc", "--no-lpips"]``."""
    def flag(name: str, value: object) -> str:
        name = name.replace("_", "-")
        return (f"--{name}" if value else f"--no-{name}") if isinstance(value, bool) else f"--{name} {value}"
    return [flag(k, v) for k, v in options.items()]


def given_options(args: argparse.Namespace) -> dict[str, object]:
    """The config options given on the command line (leaf name -> value)."""
    given = {f.name: getattr(args, f.name) for f, _, _ in TrainConfig().leaves() if hasattr(args, f.name)}
    return {k: v for k, v in given.items() if v or k not in ("data", "out")}  # DATA and --out default to ""


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe's option values (``--recipe``, else :data:`DEFAULT_RECIPE`) under the options given."""
    recipe = getattr(args, "recipe", None) or DEFAULT_RECIPE
    return TrainConfig.make(**{**RECIPES[recipe], **given_options(args)})


# -- commands ---------------------------------------------------------------------------------
def _viewer_options(args: argparse.Namespace) -> dict[str, object]:
    return dict(host=args.host, port=args.port, renderer=args.renderer, resolution=args.resolution,
                max_splats=args.max_splats)


def cmd_train(args: argparse.Namespace) -> int:
    from trsplat.training import close_world, init_world

    world = init_world(getattr(args, "dist_timeout", TrainConfig().dist_timeout),
                       device="cuda" if _uses_cuda(args) else "cpu")
    # SIGTERM (torchrun's, when another process is lost) becomes an error until the line is out;
    # the training loop has its own handler, which stops after the step with a checkpoint
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _train(args, world)
    except TrsplatError as exc:  # reported before the group's teardown, which a launcher's SIGTERM can cut short
        return _report_error(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        close_world(world)


def _raise_terminated(signum: int, frame: types.FrameType | None) -> None:
    raise Terminated()


TR_MCMC_MEASURED_ITERS = 10_000
"""Above this many iterations the ``tr-mcmc`` recipe is not the measured best (docs/training.md)."""


def _beyond_the_measured_length(recipe: str, iters: int) -> bool:
    return recipe == "tr-mcmc" and iters > TR_MCMC_MEASURED_ITERS


def _uses_cuda(args: argparse.Namespace) -> bool:
    """Whether this process renders on CUDA (NCCL then reduces the gradients, else gloo)."""
    from trsplat.render.backends import get_backend, resolve_backend

    try:
        return get_backend(resolve_backend(getattr(args, "backend", "auto"))).device().type == "cuda"
    except TrsplatError:
        return False  # the option's own check reports it


def _train(args: argparse.Namespace, world) -> int:
    from trsplat.training import resume, train
    from trsplat.training.hooks import StartWarning
    from trsplat.training.trainer import default_hooks

    hooks = default_hooks()
    if args.viewer and world.is_writer:  # checked before the capture is loaded; the viewer starts with the loop
        from trsplat.viewer import LiveViewer, check_port

        check_port(args.host, args.port)
        if not args.viewer_every > 0:
            raise TrsplatError(f"--viewer-every {args.viewer_every}: expected seconds > 0")
        hooks.append(LiveViewer(every=args.viewer_every, **_viewer_options(args)))
    if args.resume:
        if args.data or args.out:
            raise TrsplatError(f"--resume {args.resume} continues that run in its folder with its data; "
                               f"do not give DATA or --out with it")
        if args.recipe:
            raise TrsplatError(f"--resume {args.resume} continues with the run's own options; "
                               f"--recipe applies when a run starts")
        metrics = resume(args.resume, given_options(args), world=world, hooks=hooks)
    else:
        if not args.data or not args.out:
            raise TrsplatError("train needs DATA and --out DIR (or --resume DIR)")
        cfg = config_from_args(args)
        if world.is_writer and _beyond_the_measured_length(args.recipe or DEFAULT_RECIPE, cfg.iters):
            hooks.insert(0, StartWarning(
                f"--iters {cfg.iters} with the tr-mcmc recipe: it beats Adam + MCMC at 7000 iterations, but at "
                f"30 000 (the bird) Adam + MCMC ended 2.4 dB higher; for long runs consider --recipe 3dgs-mcmc "
                f"(docs/training.md, 'Recipes')"))
        metrics = train(cfg, world=world, hooks=hooks)
    last = metrics["evals"][-1]
    if world.is_writer:
        print(json.dumps({k: last[k] for k in ("iteration", "psnr", "ssim", "lpips", "train_seconds") if k in last}))
    return 0


def _load_run(run_dir: str):
    """(config, checkpoint dict, Gaussians at the checkpoint) of a saved run."""
    from trsplat.gaussians import Gaussians
    from trsplat.training import RunDir

    run = RunDir(run_dir)
    cfg = run.read_config()
    ckpt = run.load_checkpoint()
    return cfg, ckpt, Gaussians.from_params(ckpt["params"])


def cmd_eval(args: argparse.Namespace) -> int:
    from trsplat.io_utils import write_json
    from trsplat.render.backends import resolve_backend
    from trsplat.training import RunDir, active_sh_degree, evaluate, load_training_scene

    cfg, ckpt, gaussians = _load_run(args.run)
    scene = load_training_scene(cfg)
    iteration = ckpt["iteration"]
    metrics = evaluate(gaussians, scene.test, sh_degree=active_sh_degree(iteration, cfg),
                       background=scene.background, backend=resolve_backend(args.backend), lpips=args.lpips)
    result = {"scene": scene.name, "iteration": iteration, "n_test_views": len(scene.test), **metrics}
    write_json(RunDir(args.run).eval_path, result)
    print(json.dumps(result))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    import torch

    from trsplat.render import render
    from trsplat.render.backends import resolve_backend
    from trsplat.training import RunDir, active_sh_degree, load_training_scene, save_render_pair

    cfg, ckpt, gaussians = _load_run(args.run)
    scene = load_training_scene(cfg)
    frames = scene.test if args.split == "test" else scene.train
    views = args.views if args.views else list(range(len(frames)))
    bad = [v for v in views if not 0 <= v < len(frames)]
    if bad:
        raise TrsplatError(f"--views {bad}: the {args.split} split has views 0..{len(frames) - 1}")
    out = Path(args.out) if args.out else RunDir(args.run).renders_dir(split=args.split)
    backend = resolve_backend(args.backend)
    for v in views:
        frame = frames[v]
        with torch.no_grad():
            res = render(gaussians, frame.camera, sh_degree=active_sh_degree(ckpt["iteration"], cfg),
                         background=scene.background, backend=backend)
        save_render_pair(out / f"{v:03d}.png", res.image, frame.image)
    print(f"wrote {len(views)} renders (render | ground truth) to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trsplat.gaussians import save_ply
    from trsplat.training import RunDir

    _, _, gaussians = _load_run(args.run)
    out = Path(args.out) if args.out else RunDir(args.run).ply_path
    save_ply(gaussians, out)
    print(f"wrote {len(gaussians)} Gaussians to {out}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from trsplat.viewer import view

    return view(args.target, backend=args.backend, **_viewer_options(args))


def cmd_compare(args: argparse.Namespace) -> int:
    from trsplat.training.plots import compare_runs

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    plot, table_path, table = compare_runs(args.runs, args.out, labels)
    print(table, end="")
    print(f"wrote {plot} and {table_path}")
    return 0


def cmd_make_scene(args: argparse.Namespace) -> int:
    from trsplat.synthetic import make_synthetic_scene

    if args.size < 16:
        raise TrsplatError(f"--size must be >= 16 pixels, got {args.size}")
    out = make_synthetic_scene(args.out, size=args.size, seed=args.seed)
    print(f"wrote the synthetic scene to {out}")
    return 0


def cmd_bench_render(args: argparse.Namespace) -> int:
    from trsplat.bench import render_bench

    return render_bench.main(args)


def _add_viewer_arguments(p) -> None:
    p.add_argument("--port", type=int, default=8080, help="port of the page (default: 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every network)")
    p.add_argument("--renderer", default="browser", choices=("browser", "trsplat"),
                   help="what draws the view at first: the browser's splats or trsplat's renderer "
                        "(switchable on the page; default: browser)")
    p.add_argument("--resolution", type=int, default=256, metavar="PX",
                   help="longest side of trsplat's renders in pixels (default: 256)")
    p.add_argument("--max-splats", type=int, default=None, metavar="N",
                   help="send at most N splats to the browser (default: all visible ones)")


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes end in one line too (argparse prints its usage block otherwise)."""

    def error(self, message: str):
        self.exit(2, f"trsplat: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trsplat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train Gaussians on a capture (COLMAP, NeRF/Blender, instant-ngp)")
    p.add_argument("data", nargs="?", default="", help="capture folder")
    p.add_argument("--out", default="", help="output folder of the run")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the stopped run in DIR")
    p.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                   help="option values the run starts from; the options given override them (default: "
                        f"{DEFAULT_RECIPE}; docs/training.md, 'Recipes': " +
                        "; ".join(f"{k}: {' '.join(_flags(v)) or 'every option at its default'}"
                                  for k, v in RECIPES.items()) + ")")
    add_config_arguments(p, recipe=DEFAULT_RECIPE)
    v = p.add_argument_group("live viewer (docs/viewer.md)")
    v.add_argument("--viewer", action="store_true", help="serve the training live in the browser "
                   "(current Gaussians, iteration, loss, PSNR, pause/resume)")
    v.add_argument("--viewer-every", type=float, default=2.0, metavar="S",
                   help="send the Gaussians to an open page at most every S seconds (default: 2)")
    _add_viewer_arguments(v)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("view", help="look at a run or a 3DGS PLY in the browser (docs/viewer.md)")
    p.add_argument("target", metavar="RUN_DIR|FILE.ply", help="run folder or 3DGS PLY file")
    p.add_argument("--backend", default="auto", help="backend of the trsplat renderer (default: auto)")
    _add_viewer_arguments(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("eval", help="recompute test metrics of a saved run (writes DIR/eval.json)")
    p.add_argument("run", help="run folder")
    p.add_argument("--backend", default="auto")
    p.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("render", help="render chosen cameras of a saved run")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--views", type=_parse_int_list, default=None, help="comma-separated view indices (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/renders/SPLIT)")
    p.add_argument("--backend", default="auto")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("export", help="write the PLY of a run's checkpoint")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="PLY path (default: RUN/point_cloud.ply)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="draw several runs on shared axes (PNG) and tabulate their metrics (markdown)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default="compare", help="folder for compare.png and compare.md (default: compare)")
    p.add_argument("--labels", default=None, help="comma-separated names of the runs (default: their folder names)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("make-scene", help="generate the small synthetic scene (Blender format)")
    p.add_argument("out", help="folder to write")
    p.add_argument("--size", type=int, default=128, help="image width and height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_scene)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("render", help="time forward, backward and JVP of each backend")
    try:
        from trsplat.bench import render_bench

        render_bench.add_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=cmd_bench_render)
    p = bench.add_parser("iteration", help="seconds per training iteration per optimizer, where they go, peak memory")
    from trsplat.bench import iteration

    iteration.add_arguments(p)
    p.set_defaults(func=iteration.main)
    p = bench.add_parser("optimizers", help="optimizer study: variants x scenes x seeds, tables and plots")
    from trsplat.bench.study import cli as study_cli

    study_cli.add_arguments(p)
    p.set_defaults(func=study_cli.main)
    p = bench.add_parser("distributed", help="data-parallel training: views per second against processes, "
                         "and quality against wall time for several views per step")
    from trsplat.bench import distributed

    distributed.add_arguments(p)
    p.set_defaults(func=distributed.main)
    p = bench.add_parser("curvature", help="a tr run's curvature against a many-view Gauss-Newton "
                         "diagonal, and how many Newton steps the trust region clips")
    from trsplat.bench import curvature

    curvature.add_arguments(p)
    p.set_defaults(func=curvature.main)
    return parser


def rank_prefix() -> str:
    """``"[rank R/N] "`` under torchrun (every process reports its own error), else ``""``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '?')}/{size}] " if size > 1 else ""


def _report_error(exc: TrsplatError) -> int:
    """Print the one-line error (flushed at once) and return the exit status 2."""
    if isinstance(exc, Terminated):
        exc = exc.reported()
    print(f"trsplat: error: {rank_prefix()}{exc}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a mistake already reported in one line
        return int(exc.code or 0)
    try:
        return args.func(args)
    except TrsplatError as exc:
        return _report_error(exc)
    except KeyboardInterrupt:  # a second Ctrl-C during training: stop at once, keep the last checkpoint
        print("trsplat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
