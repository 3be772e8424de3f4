"""`python -m streams <command>` (or `ecom-stream <command>`): the service's command line.

    worker          run the Faust worker (creates missing topics first unless --no-create-topics)
    create-topics   create every topic the service needs, with ECOM_PARTITIONS partitions
    send            JSON lines into an input topic, each validated against its schema first
    dlq inspect     the dead letters: counts by error type and hour, samples
    dlq redrive     send dead letters' original records back to their input topic
    backfill        reprocess an input topic from a time into the outputs (not the live group)
    reenrich        the latest listing of every product through the model again
    config show     the effective settings, secrets masked
    model           the model versions Triton serves: list, load, unload (docs/rollout.md)
    demo            the embedded default: broker + Triton + worker + real data replayed, then a summary
    produce-sample  replay the real sample (and broken events) into the input topics of a running broker
    collect         read the outputs and dead letters of a run and count them per input event

Settings come from the environment (prefix ECOM_, see streams/settings.py), read once here. The
operator commands live in `streams.cli` (docs/service.md, "Operating the service"). `demo`,
`produce-sample` and `collect` are tooling: they live in the repository's `tooling` package, imported
only when one of them runs (the worker image ships `streams` alone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import metadata

from pydantic import ValidationError
from pydantic_settings import SettingsError

from streams.settings import Settings, describe_errors

log = logging.getLogger("streams")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Never `str(exc)`: pydantic's text repeats every input value, the SASL password included.
        lines = "".join(f"  {line}\n" for line in describe_errors(exc))
        sys.stderr.write(f"invalid settings (environment variables ECOM_*):\n{lines}")
        raise SystemExit(2) from None
    except SettingsError as exc:
        sys.stderr.write(f"invalid settings (environment variables ECOM_*): {exc}\n")
        raise SystemExit(2) from None


def program_name(argv0: str | None = None) -> str:
    """How the command was called, for `--help`: the console script by its name, else the module form."""
    name = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    return name if name.startswith("ecom-stream") else "python -m streams"


def version() -> str:
    try:
        return metadata.version("ecom-enrichment")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


def _time(text: str) -> datetime:
    from streams.cli.timerange import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_window(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--since", type=_time, default=None, help=f"{what} at or after this time (UTC)")
    parser.add_argument("--until", type=_time, default=None, help=f"{what} before this time (UTC)")


def _require_tooling(exc: ModuleNotFoundError, command: str) -> None:
    """Exit with a clear message when `command` cannot run because the `tooling` package is absent."""
    if exc.name is not None and exc.name.split(".")[0] == "tooling":
        sys.stderr.write(
            f"`python -m streams {command}` needs the repository's `tooling` package, which is not "
            "installed here (the worker image ships the service alone); run it from a checkout of the "
            "repository, e.g. `make demo`\n"
        )
        raise SystemExit(2) from None


def _add_sample_args(parser: argparse.ArgumentParser, *, reviews: int, products: int, clicks: int) -> None:
    parser.add_argument("--reviews", type=int, default=reviews, help="held-out reviews to replay")
    parser.add_argument(
        "--products", type=int, default=products, help="Fashion-MNIST test images as listings"
    )
    parser.add_argument(
        "--clicks", type=int, default=clicks, help="Instacart order lines as add_to_cart clicks"
    )
    parser.add_argument("--no-broken", action="store_true", help="leave out the deliberately broken events")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description=__doc__.split("\n\n")[0].replace("`", ""),
        epilog="Settings: ECOM_* environment variables (`config show`). Runbook: docs/service.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run the Faust worker")
    worker.add_argument("--no-create-topics", action="store_true", help="only check that the topics exist")

    sub.add_parser("create-topics", help="create every topic the service needs")

    send = sub.add_parser(
        "send",
        help="JSON lines into an input topic, validated first",
        description="Send one event per line of FILE (- for standard input) to an input topic, keyed by the "
        "topic's key field. Every line is validated against the topic's input schema first; unless "
        "--skip-invalid, nothing is sent when a line is invalid.",
    )
    send.add_argument(
        "topic", metavar="TOPIC", help="an input topic: reviews, product-uploads, clickstream, ..."
    )
    send.add_argument("file", metavar="FILE", help="JSON lines, or - for standard input")
    send.add_argument("--dry-run", action="store_true", help="validate and report only; send nothing")
    send.add_argument("--skip-invalid", action="store_true", help="send the valid lines even if some are not")

    dlq = sub.add_parser("dlq", help="the dead-letter topics: inspect, redrive")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for action, text in (
        ("inspect", "counts by error type and hour, and samples"),
        ("redrive", "send the original records back to their input topics"),
    ):
        parser_ = dlq_sub.add_parser(action, help=text, description=f"Dead letters: {text}.")
        parser_.add_argument(
            "--topic",
            action="append",
            default=[],
            help="an input (reviews) or its dead-letter topic (reviews.dlq); repeatable; default: all",
        )
        parser_.add_argument(
            "--type",
            action="append",
            default=[],
            help="only this error type (SchemaViolation, ...); repeatable",
        )
        _add_window(parser_, "dead-lettered")
    inspect = dlq_sub.choices["inspect"]
    inspect.add_argument("--samples", type=int, default=3, help="dead letters shown per topic")
    inspect.add_argument("--json", action="store_true", help="one JSON document")
    redrive = dlq_sub.choices["redrive"]
    redrive.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="leave out an input re-driven this many times already (default 3)",
    )
    redrive.add_argument("--dry-run", action="store_true", help="count what would be re-driven; send nothing")

    backfill = sub.add_parser(
        "backfill",
        help="reprocess an input topic from a time into the outputs",
        description="Reprocess the records of an input topic written in a time range into its output, "
        "without the workers' consumer group. Clicks and queries are refused (docs/service.md).",
    )
    backfill.add_argument("--topic", required=True, help="the input topic: reviews or product-uploads")
    _add_window(backfill, "records written")
    backfill.add_argument("--dead-letters", action="store_true", help="dead-letter what fails again")
    backfill.add_argument("--dry-run", action="store_true", help="count the records only")

    reenrich = sub.add_parser(
        "reenrich",
        help="the latest listing of every product through the model again",
        description="Read product-uploads whole, keep each product's latest listing, and publish its "
        "enrichment to product-categories (after a model upgrade).",
    )
    reenrich.add_argument("--dead-letters", action="store_true", help="dead-letter what fails again")
    reenrich.add_argument("--dry-run", action="store_true", help="count the listings only")

    config = sub.add_parser("config", help="the effective settings")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="every setting, secrets masked")
    show.add_argument("--json", action="store_true", help="one JSON document")

    demo = sub.add_parser("demo", help="the embedded default, end to end")
    _add_sample_args(demo, reviews=300, products=200, clicks=500)
    demo.add_argument("--large", action="store_true", help="10x the default sample")
    demo.add_argument(
        "--rollout",
        action="store_true",
        help="model versions instead: shadow, canary, then promotion under a steady stream (docs/rollout.md)",
    )
    demo.add_argument(
        "--rate", type=float, default=None, help="replay at this many events/s (default: one burst)"
    )
    demo.add_argument("--timeout", type=float, default=600, help="seconds to wait for every output")
    demo.add_argument("--log-dir", default=None, help="where the servers and the worker write their logs")
    demo.add_argument(
        "--model-repository", default=None, help="Triton model repository (default: triton_models/)"
    )

    produce = sub.add_parser("produce-sample", help="replay the real sample into a running broker")
    _add_sample_args(produce, reviews=100, products=100, clicks=200)
    produce.add_argument("--manifest", default=None, help="write the produced event ids here (JSON)")

    collect = sub.add_parser("collect", help="count outputs and dead letters per input event")
    collect.add_argument("--manifest", required=True, help="the file written by produce-sample --manifest")
    collect.add_argument("--timeout", type=float, default=300)

    from streams.rollout_cli import add_model_parser

    add_model_parser(sub)  # model list|load|unload (docs/rollout.md)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from streams.worker import run_worker

        return run_worker(_settings(), create_topics=not args.no_create_topics)

    # The demo speaks for itself; libraries only when something is wrong.
    level = logging.WARNING if args.command == "demo" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    operator = OPERATOR_COMMANDS.get(args.command)
    if operator is not None:
        from streams.cli import OperatorError

        try:
            return operator(args)
        except OperatorError as exc:
            sys.stderr.write(f"{program_name()} {args.command}: {exc}\n")
            return 2
        except ValueError as exc:  # a selection that cannot be (--until before --since)
            sys.stderr.write(f"{program_name()} {args.command}: {exc}\n")
            return 2
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    if args.command == "create-topics":
        from streams.topics import create_topics

        settings = _settings()
        ready = asyncio.run(create_topics(settings))
        log.info("%d topics ready, %d created", len(ready.counts), len(ready.created))
        return 0
    if args.command == "demo":
        try:
            from tooling.demo import DemoOptions, run_demo
            from tooling.rollout import rollout_demo_command
        except ModuleNotFoundError as exc:
            _require_tooling(exc, args.command)
            raise

        if args.rollout:
            return rollout_demo_command(_settings(), args)

        scale = 10 if args.large else 1
        options = DemoOptions(
            reviews=args.reviews * scale,
            products=args.products * scale,
            clicks=args.clicks * scale,
            broken=not args.no_broken,
            seed=args.seed,
            timeout=args.timeout,
            log_dir=args.log_dir,
            rate=args.rate,
            model_repository=args.model_repository,
        )
        return run_demo(_settings(), options)
    if args.command == "produce-sample":
        try:
            from tooling.replay import produce_sample_command
        except ModuleNotFoundError as exc:
            _require_tooling(exc, args.command)
            raise

        return produce_sample_command(_settings(), args)
    if args.command == "collect":
        try:
            from tooling.replay import collect_command
        except ModuleNotFoundError as exc:
            _require_tooling(exc, args.command)
            raise

        return collect_command(_settings(), args)
    raise AssertionError(args.command)  # pragma: no cover


# --- the operator commands (streams.cli) --------------------------------------------------------------
def _send(args: argparse.Namespace) -> int:
    from streams.cli.send import send_command

    settings = _settings()
    if args.file == "-":
        return send_command(
            settings,
            args.topic,
            sys.stdin.buffer,
            dry_run=args.dry_run,
            skip_invalid=args.skip_invalid,
            out=sys.stdout,
        )
    try:
        source = open(args.file, "rb")  # noqa: SIM115  (closed below)
    except OSError as exc:
        from streams.cli import OperatorError

        raise OperatorError(f"cannot read {args.file}: {exc.strerror}") from None
    with source:
        return send_command(
            settings, args.topic, source, dry_run=args.dry_run, skip_invalid=args.skip_invalid, out=sys.stdout
        )


def _dlq(args: argparse.Namespace) -> int:
    from streams.cli.dlq import Selection, inspect_command, redrive_command
    from streams.cli.timerange import TimeRange

    selection = Selection(frozenset(args.type), TimeRange(args.since, args.until))
    if args.dlq_command == "inspect":
        return inspect_command(
            _settings(), args.topic, selection, samples=args.samples, as_json=args.json, out=sys.stdout
        )
    return redrive_command(
        _settings(),
        args.topic,
        selection,
        max_attempts=args.max_attempts,
        dry_run=args.dry_run,
        out=sys.stdout,
    )


def _backfill(args: argparse.Namespace) -> int:
    from streams.cli.reprocess import backfill_command
    from streams.cli.timerange import TimeRange

    window = TimeRange(args.since, args.until)
    return backfill_command(
        _settings(), args.topic, window, dead_letters=args.dead_letters, dry_run=args.dry_run, out=sys.stdout
    )


def _reenrich(args: argparse.Namespace) -> int:
    from streams.cli.reprocess import reenrich_command

    return reenrich_command(_settings(), dead_letters=args.dead_letters, dry_run=args.dry_run, out=sys.stdout)


def _config(args: argparse.Namespace) -> int:
    from streams.cli.config import show_command

    return show_command(_settings(), as_json=args.json, out=sys.stdout)


def _model(args: argparse.Namespace) -> int:
    from streams.rollout_cli import model_command

    return model_command(_settings(), args, sys.stdout)


OPERATOR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "send": _send,
    "dlq": _dlq,
    "backfill": _backfill,
    "reenrich": _reenrich,
    "config": _config,
    "model": _model,
}


if __name__ == "__main__":
    raise SystemExit(main())
