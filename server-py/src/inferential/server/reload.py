"""SIGHUP: re-read the configuration and apply its live sections."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable, Optional

from inferential.config import ConfigError, load_config
from inferential.scheduler import available_policies, available_schedulers, create_scheduler

logger = logging.getLogger("inferential.ops")

#: Sections a reload applies to the running server; the others need a restart.
LIVE_SECTIONS = ("scheduling", "clients", "auth", "logging")
_RESTART_SECTIONS = ("transport", "response_tracking", "metrics", "backend", "models", "ray", "backends")


def check_reloadable(config: Any) -> list[str]:
    """Problems that pydantic cannot see: a strategy or policy name nobody registered."""
    sched = config.scheduling
    if sched.strategy not in available_schedulers():
        return [
            f"scheduling.strategy: unknown strategy {sched.strategy!r} (available: {', '.join(available_schedulers())})"
        ]
    if sched.policy is not None and sched.policy not in available_policies():
        return [f"scheduling.policy: unknown policy {sched.policy!r} (available: {', '.join(available_policies())})"]
    try:
        create_scheduler(sched)  # pure: builds the strategy once to surface its own objections
    except Exception as err:
        return [f"scheduling: {err}"]
    return []


def install_reload(server: Any, config_path: Optional[str], load: Optional[Callable[[], Any]] = None) -> None:
    """SIGHUP re-reads the configuration and applies scheduling, clients, auth and logging live.

    ``load`` builds the new configuration (the CLI passes one that re-applies its
    command-line overrides); by default the file is read as it is. An invalid
    file is refused as a whole: the log line names each bad key and the server
    keeps its running configuration. Queued requests carry over to a new strategy.
    """
    applied = [server.config.model_copy(deep=True)]

    def refuse(problems: list[str]) -> None:
        server.metrics.increment("config_reloads", {"result": "refused"})
        logger.error("reload of %s refused, keeping the running configuration: %s", config_path, "; ".join(problems))

    def reload() -> None:
        if config_path is None:
            logger.warning("SIGHUP: nothing to reload, the server was started without --config")
            return
        try:
            new = load() if load is not None else load_config(config_path)
        except ConfigError as err:
            refuse(err.problems)
            return
        problems = check_reloadable(new)
        if problems:
            refuse(problems)
            return
        old = applied[0]
        try:
            server.reconfigure(new)
        except Exception as err:
            refuse([f"{type(err).__name__}: {err}"])
            return
        if new.logging != old.logging:
            from inferential.logs import configure_logging

            configure_logging(new.logging.level, new.logging.json_format)
        applied[0] = new
        server.metrics.increment("config_reloads", {"result": "ok"})
        changed = [s for s in LIVE_SECTIONS if getattr(new, s) != getattr(old, s)]
        logger.info(
            "configuration reloaded from %s: %s; scheduler %s, %d known clients",
            config_path,
            f"changed {', '.join(changed)}" if changed else "no live changes",
            new.scheduling.strategy,
            len(new.clients.known),
        )
        later = [s for s in _RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
        if later:
            logger.warning("%s changed in %s: not applied, takes a restart", ", ".join(later), config_path)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, AttributeError):
        logger.warning("SIGHUP reload is not available here")
