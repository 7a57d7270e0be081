"""The training command without Flask: `python -m utils.train_cli --data pack.npz --out m.keras ...`.

`flask train` and this module share one set of options (train_options) and one call (run_training),
so a GPU machine that has Keras but not this web app's packages (KERAS_BACKEND=jax or torch) runs
exactly the training `flask train` runs here. See the README, "Training on a GPU".
"""
from __future__ import annotations

from pathlib import Path

import click

_OPTIONS = [
    click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(exists=True),
                 help="DIR/{real,fake}, DIR/{Train,Validation,Test}/{Real,Fake}, or a face pack (.npz from "
                      "`flask pack-faces`); repeat to combine."),
    click.option("--epochs", type=int, default=10),
    click.option("--steps-per-epoch", type=int, default=200),
    click.option("--batch-size", type=int, default=48),
    click.option("--input-size", type=int, default=128),
    click.option("--width", type=float, default=1.0, help="Channel multiplier of the network."),
    click.option("--learning-rate", type=float, default=2e-3),
    click.option("--minutes", type=float, default=None, help="Stop after the epoch that passes this budget."),
    click.option("--seed", type=int, default=0),
    click.option("--init-from", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Continue training this .keras model (same network and input size; keep its seed)."),
    click.option("--source-balance", type=click.Choice(["equal", "sqrt"]), default="equal",
                 help="Share of each batch per source: equal, or by the square root of its training faces."),
    click.option("--sbi-fraction", type=click.FloatRange(0.0, 0.9), default=0.25, show_default=True,
                 help="Share of each batch made of self-blended pseudo-fakes (they train the blending head)."),
    click.option("--soften-fraction", type=click.FloatRange(0.0, 0.9), default=0.0, show_default=True,
                 help="Share of faces (real and fake alike) blurred or shrunk as a whole before the usual "
                      "augmentation, so that softness alone stops counting as evidence."),
    click.option("--codec-fraction", type=click.FloatRange(0.0, 0.9), default=0.0, show_default=True,
                 help="Share of faces (real and fake alike) ending as an H.264 intra frame at quantiser 22-42 "
                      "instead of the usual chance of a JPEG re-encoding, as faces in uploaded videos do."),
    click.option("--codec-kinds", type=click.Choice(["h264", "heic", "avif"]), multiple=True, default=("h264",),
                 show_default=True,
                 help="Codecs for the --codec-fraction faces, one drawn at random per face when repeated: h264 (an intra frame), "
                      "heic (an HEVC still, as iPhones save photos), avif (an AV1 still)."),
    click.option("--sbi-mismatch", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
                 help="Share of self-blended pseudo-fakes whose inner face is also shrunk and upscaled or "
                      "JPEG-compressed apart from its surroundings, as a pasted face often is."),
    click.option("--sbi-sources", type=click.Choice(["like-reals", "alternate"]), default="like-reals",
                 show_default=True,
                 help="Which sources the self-blended pseudo-fakes are made from: shared as the real places "
                      "are (like-reals), or the sources in turn (alternate: every run before 2026-12-06's "
                      "run 12; reproduces them)."),
    click.option("--mirror-average/--no-mirror-average", default=False, show_default=True,
                 help="Score each face as the mean of its and its mirror image's logits (fitted that way "
                      "by calibration). Off: better on the validation split, worse on unseen FF++ faces."),
    click.option("--photo-source", "photo_sources", multiple=True, metavar="NAME",
                 help="A source (--data folder name) whose faces are photos, not video frames: images are then "
                      "judged with a band fitted on those sources (repeat for several). The shipped model: "
                      "stylegan1_ffhq."),
    click.option("--loader-workers", type=int, default=1,
                 help="Threads preparing batches (raise it where a GPU waits for one CPU core)."),
]


def train_options(command):
    """The options of `flask train` and `python -m utils.train_cli` (--out is each one's own)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def run_training(out: str | Path, cache_dir: str | Path, **options) -> None:
    """Train with the parsed options; a bad input becomes a one-line error, not a traceback."""
    from utils.train import train

    try:
        card = train(list(options.pop("data_dirs")), out, max_minutes=options.pop("minutes"), cache_dir=cache_dir,
                     log=lambda m: click.echo(m, err=True), **options)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"wrote {out} (version {card['version']}) and {Path(out).with_name('model_card.json')}")


@click.command()
@train_options
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Model file to write.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="data/cache",
              help="Where cropped faces of dataset folders are cached.")
def main(out, cache_dir, **options):
    """Train the detector (same code and options as `flask train`)."""
    run_training(out, cache_dir, **options)


if __name__ == "__main__":
    main()
