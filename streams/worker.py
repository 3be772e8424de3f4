"""`python -m streams worker`: ensure the topics, then run the Faust worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import logging.config

from streams.lifecycle import Retry, RetryPolicy
from streams.logs import logging_config
from streams.settings import Settings
from streams.topics import TopicSetupError, TopicsReady, create_topics

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, *, create: bool, wait: float = 60.0) -> TopicsReady:
    """Create (or only check) every topic before Faust subscribes; wait a while for the broker."""

    def unreachable(exc: BaseException, attempt: int) -> bool:
        return not isinstance(exc, TopicSetupError)  # a setup error is final; anything else may pass

    retry = Retry(RetryPolicy(initial=0.5, maximum=5.0))
    try:
        return asyncio.run(
            retry.call(
                lambda: create_topics(settings, create=create),
                what="topic setup",
                should_retry=unreachable,
                give_up_after_s=wait,
            )
        )
    except TopicSetupError:
        raise
    except Exception as exc:
        raise TopicSetupError(f"broker {settings.kafka_bootstrap} not reachable: {exc}") from exc


def run_worker(settings: Settings, *, create_topics: bool = True) -> int:
    import faust

    from streams.app import create_app

    config = logging_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    try:
        ready = ensure_topics(settings, create=create_topics)
    except TopicSetupError as exc:
        log.error("%s", exc)
        return 3
    if ready.table_partitions != settings.partitions:
        # The topics were made elsewhere: the table must match the clickstream it is fed from.
        log.warning(
            "using %d partitions for the table, as the existing clickstream has", ready.table_partitions
        )
        settings = settings.model_copy(update={"partitions": ready.table_partitions})
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=config,
        quiet=True,
        redirect_stdouts=False,
    )
    log.info(
        "worker %s: kafka=%s triton=%s model=%s guarantee=%s partitions=%d web=:%d",
        settings.app_id,
        settings.kafka_bootstrap,
        settings.triton_grpc_url,
        settings.triton_model,
        settings.processing_guarantee,
        settings.partitions,
        settings.web_port,
    )
    worker.execute_from_commandline()
    return 0
