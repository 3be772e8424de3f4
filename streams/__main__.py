"""`python -m streams <command>`: the service's command line.

    worker          run the Faust worker (creates missing topics first unless --no-create-topics)
    create-topics   create every topic the service needs, with ECOM_PARTITIONS partitions
    demo            the embedded default: broker + Triton + worker + real data replayed, then a summary
    produce-sample  replay the real sample (and broken events) into the input topics of a running broker
    collect         read the outputs and dead letters of a run and count them per input event

Settings come from the environment (prefix ECOM_, see streams/settings.py), read once here. `demo`,
`produce-sample` and `collect` are tooling: they live in the repository's `tooling` package, imported
only when one of them runs (the worker image ships `streams` alone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

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
    parser = argparse.ArgumentParser(prog="python -m streams", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the Faust worker")
    worker.add_argument("--no-create-topics", action="store_true", help="only check that the topics exist")

    sub.add_parser("create-topics", help="create every topic the service needs")

    demo = sub.add_parser("demo", help="the embedded default, end to end")
    _add_sample_args(demo, reviews=300, products=200, clicks=500)
    demo.add_argument("--large", action="store_true", help="10x the default sample")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from streams.worker import run_worker

        return run_worker(_settings(), create_topics=not args.no_create_topics)

    # The demo speaks for itself; libraries only when something is wrong.
    level = logging.WARNING if args.command == "demo" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "create-topics":
        from streams.topics import create_topics

        settings = _settings()
        ready = asyncio.run(create_topics(settings))
        log.info("%d topics ready, %d created", len(ready.counts), len(ready.created))
        return 0
    if args.command == "demo":
        try:
            from tooling.demo import DemoOptions, run_demo
        except ModuleNotFoundError as exc:
            _require_tooling(exc, args.command)
            raise

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


if __name__ == "__main__":
    raise SystemExit(main())
