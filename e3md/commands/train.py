"""e3md train: fit a potential to reference data from a TOML config.

    e3md train potentials/configs/rmd17-ethanol.toml --max-time 1500
    e3md train my.toml --set optimizer.learning_rate=0.002 --set training.batch_size=4
    e3md train my.toml --resume            # continue the run from its checkpoint

Every choice is in the config file (see ``e3md.training.TrainConfig``); flags override it and
the overridden config is what the model card records. Writes ``<output_dir>/<name>.e3md``, a
model card ``README.md``, parity plots and learning curves.
"""

import sys

#: flag -> config key
_FLAGS = {
    "max_time": "training.max_time",
    "max_epochs": "training.max_epochs",
    "batch_size": "training.batch_size",
    "patience": "training.patience",
    "seed": "training.seed",
    "output_dir": "training.output_dir",
    "checkpoint_dir": "training.checkpoint_dir",
    "learning_rate": "optimizer.learning_rate",
    "name": "name",
}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"25min"``, ``"25m"`` or ``"1.5h"``."""
    t = str(text).strip().lower()
    for suffix, factor in (("min", 60.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * factor
    return float(t)


def _parse_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def add_arguments(parser) -> None:
    parser.add_argument("config", help="TOML training config")
    parser.add_argument(
        "--max-time",
        type=parse_duration,
        help="wall-clock limit, e.g. 1500, 25min, 1h (overrides training.max_time)",
    )
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--output-dir", help="where the potential, card and plots go")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--name")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config entry (value in TOML syntax); repeatable",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in the checkpoint folder",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def overrides_from_args(args) -> dict:
    """``{"section.key": value}`` from the CLI flags."""
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    return out


def run(args) -> int:
    import logging

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    from e3md import training

    try:
        config = training.load_config(args.config, overrides_from_args(args))
    except (OSError, ValueError) as err:
        print(f"e3md train: {err}", file=sys.stderr)
        return 2
    bar = None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        state = {"last": {}}

        def progress(event):
            nonlocal bar
            if bar is None:
                bar = tqdm(desc=config.name, unit="step", dynamic_ncols=True)
            if event["kind"] == "step":
                bar.update(1)
                state["loss"] = event["loss"]
            else:
                state["last"] = event
            last = state["last"]
            post = {"epoch": event["epoch"], "loss": f"{state.get('loss', float('nan')):.4g}"}
            if last:
                post["val_E_meV"] = f"{1e3 * last['valid_energy_mae_total']:.3g}"
                post["val_F_meV/Å"] = f"{1e3 * last['valid_forces_mae']:.3g}"
            bar.set_postfix(post, refresh=False)

    try:
        summary = training.train(config, resume=args.resume, progress=progress)
    except (OSError, ValueError) as err:
        print(f"e3md train: {err}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    from e3md.evaluate import format_table

    print(
        f"{config.name}: {summary['epochs']} epochs, {summary['steps']} steps, "
        f"{summary['time_s'] / 60:.1f} min ({summary['stopped']})"
    )
    if "valid" in summary:
        print("validation errors:")
        print(format_table(summary["valid"]))
        if summary.get("test"):
            print("test errors:")
            print(format_table(summary["test"]))
        print(f"wrote {summary['potential_path']} (sha256 {summary['sha256']})")
    return 0
