"""The `inferential` command: serve, demo, top."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Optional, Sequence

from inferential.config import ConfigError, InferentialConfig, ModelConfig, load_config, parse_config

logger = logging.getLogger("inferential.cli")


def _model_arg(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name or ":" not in target:
        raise argparse.ArgumentTypeError(f"expected NAME=MODULE:ATTR, got {text!r}")
    return name, target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferential",
        description="Inference orchestration for robot fleets: schedule observations from many robots onto shared models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server", description="Run the server until SIGINT/SIGTERM.")
    serve.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file (docs/configuration.md)")
    serve.add_argument("--bind", metavar="ADDR", help="ZMQ address to listen on, e.g. tcp://0.0.0.0:5555")
    serve.add_argument(
        "--model",
        "-m",
        action="append",
        default=[],
        type=_model_arg,
        metavar="NAME=MODULE:ATTR",
        help="serve a model (repeatable), e.g. policy=inferential.models.vision_policy:VisionPolicy",
    )
    serve.add_argument("--backend", choices=["local", "ray"], help="where models run (default: local)")
    serve.add_argument("--scheduler", metavar="NAME", help="scheduling strategy, e.g. deadline_aware, edf, fifo")
    serve.add_argument("--metrics-port", type=int, metavar="PORT", help="serve /metrics, /healthz, /readyz on this port")
    serve.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default from config: INFO)")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")

    demo = sub.add_parser("demo", help="run the server with a real policy and a simulated fleet", description="Start a server with a small vision policy and drive a simulated fleet of robots against it; print a live view and a summary.")
    demo.add_argument("--backend", choices=["local", "ray"], default="ray", help="ray (embedded local Ray Serve, default) or local")
    demo.add_argument("--robots", type=int, default=8, help="number of simulated robots (default 8)")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    demo.add_argument("--report", default="demo-report", metavar="DIR", help="where to write the report (default demo-report/)")
    demo.add_argument("--scheduler", default="deadline_aware", metavar="NAME", help="scheduling strategy (default deadline_aware)")
    return parser


def config_from_args(args: argparse.Namespace) -> InferentialConfig:
    config = load_config(args.config) if args.config else InferentialConfig()
    data = config.model_dump(by_alias=True)
    if args.bind:
        data["transport"]["bind"] = args.bind
    if args.backend:
        data["backend"] = args.backend
    if args.scheduler:
        data["scheduling"]["strategy"] = args.scheduler
    if args.metrics_port is not None:
        data["metrics"]["http_port"] = args.metrics_port
    if args.log_level:
        data["logging"]["level"] = args.log_level.upper()
    if args.log_json:
        data["logging"]["json"] = True
    names = {m["name"] for m in data["models"]}
    for name, target in args.model:
        if name in names:
            data["models"] = [m for m in data["models"] if m["name"] != name]
        data["models"].append(ModelConfig(name=name, target=target).model_dump())
    return parse_config(data, args.config or "command line")


def serve(args: argparse.Namespace) -> int:
    from inferential.logs import configure_logging
    from inferential.server import Server
    from inferential.scheduler import available_schedulers

    try:
        config = config_from_args(args)
    except ConfigError as err:
        print(f"inferential: {err}", file=sys.stderr)
        return 2
    if config.scheduling.strategy not in available_schedulers():
        print(
            f"inferential: scheduling.strategy: unknown strategy {config.scheduling.strategy!r} "
            f"(available: {', '.join(sorted(available_schedulers()))})",
            file=sys.stderr,
        )
        return 2
    if not config.models and not config.ray.attach:
        print("inferential: no models: add --model NAME=MODULE:ATTR or a models: section", file=sys.stderr)
        return 2
    if args.check:
        import yaml

        print(yaml.safe_dump(config.model_dump(by_alias=True), sort_keys=False), end="")
        return 0
    configure_logging(config.logging.level, config.logging.json_format)
    server = Server(config=config)
    try:
        asyncio.run(_serve(server, args.config))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(server, config_path: Optional[str]) -> None:
    from inferential.server.ops import install_reload, start_http

    http = start_http(server)
    try:
        if config_path:
            install_reload(server, config_path)
        await server.run()
    finally:
        if http is not None:
            http.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "demo":
        from inferential.demo import run_demo

        return run_demo(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
