"""``qwen-gateway safety train``: retrain the high-risk classifier (financial / medical / legal
advice) from your own examples and see its accuracy on a held-out set; ``safety classify``
tries it on one text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qwen_gateway.config import ConfigError, Settings, load_settings
from qwen_gateway.core.textclassifier import evaluate, load_examples
from qwen_gateway.safety.classifier import (
    HELD_OUT,
    NONE,
    TRAINING,
    RiskClassifier,
    load_classifier,
)

safety_app = typer.Typer(help="Content safety: the high-risk classifier.")
err = Console(stderr=True)


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings({"data_dir": data_dir})
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


@safety_app.command("train")
def train(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data", help="JSONL of {text, label[, lang, hard]}; may repeat.", exists=True
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(help="Held-out JSONL to report on (default: the shipped one).", exists=True),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Train on --data only, without the shipped examples.")
    ] = False,
    threshold: Annotated[
        float,
        typer.Option(help="Below this confidence a text is in no category.", min=0, max=1),
    ] = 0.5,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where to save the model.")
    ] = None,
) -> None:
    """Train on the shipped examples plus yours, print the accuracy table, save the model."""
    try:
        examples = [] if replace else load_examples(TRAINING)
        for path in data or []:
            examples += load_examples(path)
        held_out = load_examples(test or HELD_OUT)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    labels = {e.label for e in examples}
    if NONE not in labels or len(labels) < 2:
        err.print(
            f"[red]Training needs examples labelled {NONE!r} and of at least one category.[/red]"
        )
        raise typer.Exit(2)
    target = _settings(data_dir).risk_model_file
    with err.status(f"Training on {len(examples)} examples ({', '.join(sorted(labels))}) ..."):
        try:
            classifier = RiskClassifier.train(examples, threshold)
        except ConfigError as exc:  # scikit-learn is missing
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    report = evaluate(classifier, held_out)
    out = [
        f"Held-out set: {test or 'shipped risk_test.jsonl'} ({len(held_out)} examples)\n",
        report.markdown(f"threshold {threshold}"),
        "",
        report.confusion_markdown(),
        "",
    ]
    sys.stdout.write("\n".join(out))
    classifier.save(target)
    err.print(f"Saved the model to {target}; gateways using this data directory load it at start.")


@safety_app.command("ship", hidden=True)
def ship_model() -> None:
    """For maintainers: retrain on the shipped examples and rewrite the shipped model."""
    from qwen_gateway.safety.classifier import SHIPPED_MODEL, ship

    ship()
    err.print(f"Wrote {SHIPPED_MODEL} ({SHIPPED_MODEL.stat().st_size} bytes).")


@safety_app.command("classify")
def classify(
    text: Annotated[str, typer.Argument(help="A prompt or an answer.")],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Below this confidence: no category (default: the model's).", min=0, max=1
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Classify one text with the saved (or shipped) model."""
    try:
        classifier = load_classifier(_settings(data_dir).risk_model_file, threshold)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    verdict = classifier.classify(text)
    sys.stdout.write(f"{verdict.category or NONE} ({verdict.confidence:.2f})\n")
