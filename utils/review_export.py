"""Close the loop: uploads an admin decided ("confirmed fake" / "actually real") and whose owner allowed
training become a folder DIR/{real,fake} that `flask train --data DIR` reads, with a groups.csv (all
faces of one file share a group, so they never straddle the train/validation split) and reviewed.json
(what was exported; the trainer copies it into the model card as `reviewed_data`)."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from extensions import db
from models import Analysis, Review, utcnow
from utils import storage

MANIFEST = "reviewed.json"
DECIDED = ("real", "fake")  # "cannot_tell" teaches nothing


@dataclass
class ExportSummary:
    folder: str
    exported_at: str
    analyses: int = 0
    faces: dict[str, int] = field(default_factory=lambda: {"real": 0, "fake": 0})
    skipped_missing_crops: int = 0
    skipped_without_consent: int = 0  # decided analyses whose owner has not allowed training
    duplicates_skipped: int = 0
    decisions_up_to: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["source"] = "reviewed"
        data["note"] = ("Face crops (the model's own framing) of uploads decided by admins, only from analyses "
                        "whose owner allowed training (Analysis.training_consent); the decision is per file, so "
                        "every face of a file carries its label.")
        return data


class ExportError(Exception):
    """The target folder cannot be used; str(exc) says why."""


def decided_analyses():
    """Finished analyses with a real/fake decision, oldest decision first."""
    return (db.select(Analysis).join(Review, Review.analysis_id == Analysis.id)
            .where(Review.decision.in_(DECIDED), Analysis.status == "done")
            .order_by(Review.created_at.asc(), Analysis.id.asc()))


def export_reviewed(out_dir: str | Path) -> ExportSummary:
    """Write DIR/real/*.jpg, DIR/fake/*.jpg, DIR/groups.csv and DIR/reviewed.json. The folder must be
    new or an earlier export (its real/ and fake/ are replaced, so crops whose owner has withdrawn
    consent since leave it), never an unrelated folder."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out} is not empty and is not an earlier export; choose a new folder.")
    for label in DECIDED:
        shutil.rmtree(out / label, ignore_errors=True)
        (out / label).mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(folder=str(out), exported_at=utcnow().isoformat(timespec="seconds") + "Z")
    seen_files: set[str] = set()
    rows = []
    for analysis in db.session.scalars(decided_analyses()):
        if not analysis.training_consent:  # faces are personal data: the owner decides, not the admin
            summary.skipped_without_consent += 1
            continue
        if analysis.sha256 in seen_files:  # the same file uploaded by several people: once is enough
            summary.duplicates_skipped += 1
            continue
        label = analysis.review.decision
        written = 0
        for number, face in enumerate(analysis.faces):
            source = storage.derived_path(analysis.id, face.crop_name) if face.crop_name else None
            if source is None or not source.is_file():
                summary.skipped_missing_crops += 1
                continue
            name = f"{analysis.sha256[:16]}-{number:03d}.jpg"
            shutil.copyfile(source, out / label / name)
            rows.append({"file": f"{label}/{name}", "label": label, "group": analysis.sha256[:16]})
            written += 1
        if written:
            seen_files.add(analysis.sha256)
            summary.analyses += 1
            summary.faces[label] += written
            summary.decisions_up_to = analysis.review.created_at.isoformat(timespec="seconds") + "Z"
    with open(out / "groups.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    (out / MANIFEST).write_text(json.dumps(summary.to_json(), indent=2))
    return summary


def register(app) -> None:
    import click
    from flask.cli import with_appcontext

    @app.cli.command("export-reviewed")
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @with_appcontext
    def export_reviewed_command(out_dir):
        """Write admin-decided uploads (confirmed fake / actually real) whose owner allowed training as
        DIR/{real,fake} face crops for `flask train --data DIR`."""
        try:
            summary = export_reviewed(out_dir)
        except ExportError as exc:
            raise click.ClickException(str(exc))
        click.echo(f"wrote {summary.faces['real']} real and {summary.faces['fake']} fake face crops "
                   f"from {summary.analyses} reviewed analyses to {summary.folder}")
        click.echo(f"skipped {summary.skipped_without_consent} decided analyses whose owner has not allowed "
                   "training")
        if summary.skipped_missing_crops:
            click.echo(f"{summary.skipped_missing_crops} faces had no crop on disk and were skipped.", err=True)
        if not summary.analyses and summary.skipped_without_consent:
            click.echo("Nothing to export yet: no owner of a decided analysis has allowed training.", err=True)
        elif not summary.analyses:
            click.echo("Nothing to export yet: no analysis has a 'confirmed fake' or 'actually real' decision.",
                       err=True)
