"""``qwen-gateway intent train``: retrain the intent classifier from your own examples and see
its accuracy on a held-out set; ``intent classify`` tries it on one text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.routing.intent import (
    DATA,
    LearnedClassifier,
    RuleClassifier,
    evaluate,
    load_examples,
    load_saved,
)

intent_app = typer.Typer(help="The offline intent classifier (code / math / general).")
err = Console(stderr=True)


def model_path(data_dir: Path | None) -> Path:
    try:
        settings = load_settings({"data_dir": data_dir})
    except ConfigError as exc:
        err.print(f"[red]Configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    return settings.intent_model_file


@intent_app.command("train")
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
        float, typer.Option(help="Below this confidence the answer is 'general'.", min=0, max=1)
    ] = 0.45,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where to save the model.")
    ] = None,
) -> None:
    """Train on the shipped examples plus yours, print the accuracy table, save the model."""
    examples = [] if replace else load_examples(DATA / "intent_train.jsonl")
    for path in data or []:
        try:
            examples += load_examples(path)
        except ValueError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    labels = {e.label for e in examples}
    if len(labels) < 2:
        err.print("[red]Training needs examples of at least two categories.[/red]")
        raise typer.Exit(2)
    held_out = load_examples(test or DATA / "intent_test.jsonl")
    with err.status(f"Training on {len(examples)} examples ({', '.join(sorted(labels))}) ..."):
        learned = LearnedClassifier(threshold).fit(examples)
    out = [
        f"Held-out set: {test or 'shipped intent_test.jsonl'} ({len(held_out)} examples)\n",
        evaluate(learned, held_out).markdown("learned"),
        "",
        evaluate(RuleClassifier(), held_out).markdown("rules"),
        "",
    ]
    sys.stdout.write("\n".join(out))
    target = model_path(data_dir)
    learned.save(target)
    err.print(f"Saved the model to {target}; gateways using this data directory load it at start.")


@intent_app.command("ship", hidden=True)
def ship_model() -> None:
    """For maintainers: retrain on the shipped examples and rewrite the shipped model."""
    from qwen_gateway.routing.intent import SHIPPED_MODEL, ship

    ship()
    err.print(f"Wrote {SHIPPED_MODEL} ({SHIPPED_MODEL.stat().st_size} bytes).")


@intent_app.command("classify")
def classify(
    text: Annotated[str, typer.Argument(help="A user message.")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Classify one message with the saved (or shipped) model and the rules."""
    from qwen_gateway.routing.intent import default_classifier

    try:
        learned = load_saved(model_path(data_dir)) or default_classifier()
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for classifier in (learned, RuleClassifier()):
        intent = classifier.classify(text)
        sys.stdout.write(f"{intent.classifier}: {intent.category} ({intent.confidence:.2f})\n")
