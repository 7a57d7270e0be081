"""`flask train`, `flask evaluate`, `flask scan`: the detector's operator commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

import convert
from utils.train_cli import run_training, train_options

MEDIA_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".heic", ".heif", ".avif", ".bmp", ".webp", ".tif", ".tiff", ".gif",
    ".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".3gp", ".flv", ".ogv",
}


def _cache_dir() -> Path:
    """Where cropped training/evaluation faces are cached (git-ignored; DETECTOR_CACHE_DIR overrides)."""
    return Path(current_app.config.get("DETECTOR_CACHE_DIR") or Path(current_app.root_path) / "data" / "cache")


def expand_paths(paths: tuple[str, ...]) -> list[Path]:
    """Files as given; folders walked recursively for media-looking files (content is sniffed later)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES))
        else:
            files.append(path)
    return files


def scan_one(path: Path, detector, limits, frames: int, whole_image: bool) -> dict:
    """One line of `scan` output; a bad file becomes an error line instead of stopping the batch."""
    from utils.analysis import inspect_media

    line = {"path": str(path), "kind": None, "verdict": None, "score": None,
            "threshold": detector.threshold, "model_version": detector.version,
            "faces": 0, "frames": 0, "uncertain_band": None, "error": None}
    try:
        if not path.is_file():
            raise convert.MediaError("No such file.")
        report = inspect_media(path, detector=detector, limits=limits, frames=frames, whole_image=whole_image)
    except convert.MediaError as exc:
        line["error"] = str(exc)
        return line
    line.update(kind=report.kind, verdict=report.verdict.verdict,
                score=None if report.verdict.score is None else round(float(report.verdict.score), 4),
                faces=len(report.faces), frames=len(report.frames))
    if report.verdict.score is not None:  # the band that decided it (photos, soft faces: wider)
        line["uncertain_band"] = [round(float(report.uncertain_low), 4), round(float(report.uncertain_high), 4)]
    return line


def register(app: Flask) -> None:
    @app.cli.command("scan")
    @click.argument("paths", nargs=-1, required=True, type=click.Path())
    @click.option("--whole-image", is_flag=True, help="Treat each image (or frame) as one face crop.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    @click.option("--frames", type=int, default=None, help="Frames to sample per video (default VIDEO_FRAMES).")
    @with_appcontext
    def scan_command(paths, whole_image, as_json, frames):
        """Analyse image/video files and folders (recursively) without the web app."""
        from utils.analysis import media_limits_from_config
        from utils.model import ModelUnavailable, get_detector

        try:
            detector = get_detector(current_app.config["MODEL_PATH"])
        except ModelUnavailable as exc:
            raise click.ClickException(str(exc))
        limits = media_limits_from_config(current_app.config)
        frames = frames or current_app.config["VIDEO_FRAMES"]
        files = expand_paths(paths)
        failures = 0
        show_bar = len(files) > 1 and sys.stderr.isatty()
        with click.progressbar(files, label="scanning", file=sys.stderr) if show_bar else _plain(files) as bar:
            for path in bar:
                line = scan_one(path, detector, limits, frames, whole_image)
                failures += line["error"] is not None
                if as_json:
                    click.echo(json.dumps(line))
                elif line["error"]:
                    click.echo(f"{path}: error: {line['error']}")
                else:
                    score = "-" if line["score"] is None else f"{line['score']:.3f}"
                    click.echo(f"{path}: {line['verdict']} (score {score}, {line['kind']}, "
                               f"{line['faces']} faces in {line['frames']} frames)")
        if failures and not as_json:
            click.echo(f"{failures} of {len(files)} files could not be analysed.", err=True)

    @app.cli.command("train")
    @train_options
    @click.option("--out", type=click.Path(dir_okay=False), default=None, help="Model file (default MODEL_PATH).")
    @with_appcontext
    def train_command(out, **options):
        """Train the detector, calibrate it on the validation split, write the model and its card."""
        run_training(out or current_app.config["MODEL_PATH"], _cache_dir(), **options)

    @app.cli.command("pack-faces")
    @click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
                  help="Dataset folders, as for `train`; repeat to combine.")
    @click.option("--out", type=click.Path(dir_okay=False), default="pack/faces.npz", show_default=True)
    @click.option("--input-size", type=int, default=128)
    @click.option("--seed", type=int, default=0, help="The split's seed: train with the same one.")
    @click.option("--quality", type=click.IntRange(50, 100), default=90, help="WebP quality of the crops.")
    @click.option("--max-mb", type=float, default=52.0, show_default=True,
                  help="Size cap: the largest (source, label) pools are cut to fit.")
    @with_appcontext
    def pack_faces_command(data_dirs, out, input_size, seed, quality, max_mb):
        """Write the training split's face crops as one compact file for a GPU machine."""
        from utils.train import write_pack

        try:
            write_pack(list(data_dirs), out, input_size=input_size, cache_dir=_cache_dir(), seed=seed,
                       quality=quality, max_mb=max_mb, log=lambda m: click.echo(m, err=True))
        except ValueError as exc:
            raise click.ClickException(str(exc))

    @app.cli.command("calibrate")
    @click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True)
    @click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
                  help="The dataset folders the model's training data came from (their validation split is used).")
    @click.option("--mirror-average/--no-mirror-average", default=None,
                  help="Fit and score on the mean of each face's and its mirror image's logits "
                       "(default: what the card says; off when it says nothing).")
    @click.option("--photo-source", "photo_sources", multiple=True, metavar="NAME",
                  help="A source (--data folder name) whose faces are photos: images get a band fitted on "
                       "those (repeat for several; default: the card's).")
    @click.option("--no-photo-band", is_flag=True, help="Drop the card's photo band: images get the uncertain band.")
    @with_appcontext
    def calibrate_command(model_path, data_dirs, mirror_average, photo_sources, no_photo_band):
        """Fit the fusion, uncertain band and validation metrics of a trained model; rewrite its card."""
        from utils.train import calibrate_model

        if photo_sources and no_photo_band:
            raise click.UsageError("--photo-source and --no-photo-band contradict each other.")
        try:
            card = calibrate_model(model_path, list(data_dirs), cache_dir=_cache_dir(),
                                   mirror_average=mirror_average,
                                   photo_sources=() if no_photo_band else (list(photo_sources) or None),
                                   log=lambda m: click.echo(m, err=True))
        except ValueError as exc:
            raise click.ClickException(str(exc))
        aucs = ", ".join(f"{source} {m.get('shipped_roc_auc')}" for source, m in card["validation_metrics"].items())
        click.echo(f"calibrated {model_path} (version {card['version']}): validation ROC-AUC {aucs}")

    @app.cli.command("evaluate")
    @click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None)
    @click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                  help="Where the ROC and confusion PNGs go (default instance/evaluation/<data name>).")
    @click.option("--split", type=click.Choice(["all", "validation"]), default="all",
                  help="'validation': only what the model's training run held out.")
    @click.option("--degrade", "degrade_specs", multiple=True, metavar="KIND:N",
                  help="Degrade every face crop before scoring: jpeg:QUALITY, scale:FRACTION, blur:SIGMA, "
                       "noise:SD, h264:QUANTISER (an H.264 intra frame), heic:QUALITY or avif:QUALITY; repeat to chain them in order (robustness check, image folders only).")
    @click.option("--record", is_flag=True,
                  help="Add the result to the model card's robustness table (with --split validation, image folders).")
    @click.option("--media", type=click.Choice(["auto", "image", "video"]), default="auto", show_default=True,
                  help="Judge face-image folders with the band of photos (image: the card's photo band) or of "
                       "video frames; auto: image for a folder named like one of the card's photo sources.")
    @with_appcontext
    def evaluate_command(data_dir, model_path, out_dir, split, degrade_specs, record, media):
        """Print accuracy, precision, recall, F1, ROC-AUC and the confusion matrix for DIR."""
        from utils.dataset import discover_videos
        from utils.model import ModelUnavailable, card_path_for
        from utils.robustness import parse_degradation, record_in_card
        from utils.train import evaluate

        try:
            degradations = [parse_degradation(spec) for spec in degrade_specs]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--degrade")
        if record and split != "validation":
            raise click.UsageError("--record keeps held-out results only: add --split validation")
        if record and discover_videos(data_dir):
            raise click.UsageError(f"--record keeps results on face-image folders; {data_dir} holds videos")
        model_path = model_path or current_app.config["MODEL_PATH"]
        name = Path(data_dir).name + "".join(f"-{d.kind}{d.amount:g}" for d in degradations)
        out_dir = out_dir or Path(current_app.instance_path) / "evaluation" / name
        try:
            result = evaluate(data_dir, model_path, out_dir, cache_dir=_cache_dir(), split=split,
                              degradations=degradations, media=media)
        except (ModelUnavailable, ValueError) as exc:
            raise click.ClickException(str(exc))
        c = result["confusion"]
        auc = "n/a" if result["roc_auc"] is None else f"{result['roc_auc']:.4f}"
        unit = "videos" if "videos" in result else "images"
        degraded = "" if result.get("degradation", "none") == "none" else f", degraded: {result['degradation']}"
        click.echo(f"model {result['model_version']}, threshold {result['threshold']:.3f}, "
                   f"{result['n']} {unit} ({result['split']}{degraded})")
        click.echo(f"accuracy  {result['accuracy']:.4f}")
        click.echo(f"precision {result['precision']:.4f}")
        click.echo(f"recall    {result['recall']:.4f}")
        click.echo(f"f1        {result['f1']:.4f}")
        click.echo(f"roc_auc   {auc}")
        click.echo("confusion matrix (rows actual, columns predicted):")
        click.echo(f"            real   fake\n  real  {c['tn']:>7} {c['fp']:>6}\n  fake  {c['fn']:>7} {c['tp']:>6}")
        if result.get("band_uncertain") is not None:
            low, high = result["uncertain_band"]
            right, reals = result.get("band_right_outside_band"), result.get("band_reals_called_fake")
            judged = " (photo band)" if result.get("photo_band_used") else ""
            click.echo(f"uncertain band [{low:.3f}, {high:.3f}]{judged}: {result['band_uncertain']:.1%} of the {unit} "
                       f"inside it; outside it right {'n/a' if right is None else f'{right:.1%}'}; "
                       f"reals called fake {'n/a' if reals is None else f'{reals:.1%}'}")
        for key in sorted(k for k in result if k.startswith("face_auc_")):
            value = result[key]
            click.echo(f"{key} {'n/a' if value is None else f'{value:.4f}'} (over every face found)")
        click.echo(f"wrote {result['roc_png']} and {result['confusion_png']}")
        if record:
            card_path = card_path_for(model_path)
            record_in_card(card_path, Path(data_dir).name, result)
            click.echo(f"recorded in {card_path}: robustness {Path(data_dir).name} {result['degradation']}")


class _plain:
    """Stand-in for click.progressbar when there is nothing to draw."""

    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return iter(self.items)

    def __exit__(self, *exc):
        return False
