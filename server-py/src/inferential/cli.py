"""The `inferential` command: serve, demo, top."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Callable, Optional, Sequence

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
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve /metrics, /healthz, /readyz on this port"
    )
    serve.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default from config: INFO)")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")

    demo = sub.add_parser(
        "demo",
        help="run the server with a real policy and a simulated fleet",
        description="Start a server with a small vision policy and drive a simulated fleet of robots against it; print a live view and a summary.",
    )
    demo.add_argument(
        "--backend", choices=["local", "ray"], default="ray", help="ray (embedded local Ray Serve, default) or local"
    )
    demo.add_argument("--robots", type=int, default=8, help="number of simulated robots (default 8)")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    demo.add_argument(
        "--report", default="demo-report", metavar="DIR", help="where to write the report (default demo-report/)"
    )
    demo.add_argument(
        "--scheduler",
        default=None,
        metavar="NAME",
        help="scheduling strategy (default deadline_aware; edf with --chunk, which ranks robots by runway)",
    )
    chunks = demo.add_argument_group(
        "action chunks", "with --chunk H: robots run ControlLoop over the shipped chunked policy (local backend)"
    )
    chunks.add_argument("--chunk", type=int, default=0, metavar="H", help="actions per chunk (0: the classic demo)")
    chunks.add_argument(
        "--variants",
        default="rtc,rtc-blend,fixed,blend,naive,pause",
        help="runs to compare, each on a fresh server: rtc, rtc-blend, fixed, blend, naive, pause (default: all)",
    )
    chunks.add_argument(
        "--blend", default="exponential", choices=["latest", "average", "exponential"], help="robot-side blend"
    )
    chunks.add_argument("--request-at", type=int, default=None, metavar="K", help="ask at K actions left (default H/2)")
    chunks.add_argument(
        "--rates", type=_floats, default=[30.0, 40.0, 50.0], metavar="HZ,..", help="control rates, cycled over robots"
    )
    chunks.add_argument(
        "--model-ms",
        type=_floats,
        default=[14.0, 2.0],
        metavar="BASE,PER",
        help="the policy's batch time: BASE ms + PER ms per request (default 14,2)",
    )
    chunks.add_argument(
        "--admission",
        default="off",
        choices=["off", "reject", "deprioritize"],
        help="scheduling.admission (default off: a late chunk still beats none; edf ranks by runway either way)",
    )
    chunks.add_argument("--fixed-delay", type=int, default=1, metavar="D", help="hand-set delay of 'fixed' (steps)")
    chunks.add_argument("--noise", type=float, default=0.03, help="the policy's per-sample deviation (rad)")
    chunks.add_argument("--pause-ms", type=float, default=1000.0, help="'pause': how long the model stalls once")
    chunks.add_argument(
        "--max-age-ms", type=float, default=400.0, help="'pause': scheduling.action_max_age_ms (valid_until cap)"
    )

    keys = sub.add_parser(
        "keys",
        help="CURVE key pairs for auth.curve_secret_key and clients.known[].curve_public_key",
        description="Generate a ZMQ CURVE key pair (Z85). The server's secret key goes in auth.curve_secret_key and "
        "its public key to every robot (curve_server_key); a robot's public key goes in "
        "clients.known[].curve_public_key next to its id, its secret key only to that robot.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.add_parser("generate", help="print a new key pair as YAML")

    top = sub.add_parser(
        "top",
        help="live view of a running server: robots, latency, SLO, queues",
        description="Show a running server's robots (rate, p50/p99 latency, SLO attainment, last status) and models "
        "(queue, running batches, batch size, replicas), refreshed every --interval seconds. Reads the "
        "server's /status over HTTP: start it with `inferential serve --metrics-port PORT`.",
    )
    top.add_argument(
        "--server",
        "-s",
        default="http://127.0.0.1:9100",
        metavar="URL",
        help="the server's metrics HTTP address: URL, HOST:PORT or PORT (default http://127.0.0.1:9100)",
    )
    top.add_argument(
        "--interval", "-n", type=_positive, default=1.0, metavar="SECONDS", help="refresh period (default 1)"
    )
    top.add_argument(
        "--window",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="history behind rates and percentiles (default 10)",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (for scripts); exit 1 if the server cannot be reached",
    )
    return parser


EXAMPLES = """examples:
  inferential serve --model policy=mypkg.policies:Policy --metrics-port 9100
  inferential serve --config server.yaml          # every key: docs/configuration.md
  inferential serve --config server.yaml --check  # validate and print the merged configuration
  kill -HUP <pid>                                 # reload scheduling, clients, auth, logging
  inferential top --server localhost:9100         # live view of a running server
  inferential demo --backend local --duration 5   # a simulated fleet against a real policy

`inferential COMMAND --help` describes each command's options."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


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
    from inferential.scheduler import available_schedulers
    from inferential.server import Server

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

        shown = config.model_dump(by_alias=True)
        if shown["auth"].get("token"):
            shown["auth"]["token"] = "<set>"
        if shown["auth"].get("curve_secret_key"):
            shown["auth"]["curve_secret_key"] = "<set>"
        for client in shown["clients"]["known"]:
            if client.get("auth_token"):
                client["auth_token"] = "<set>"
        print(yaml.safe_dump(shown, sort_keys=False), end="")
        return 0
    configure_logging(config.logging.level, config.logging.json_format)
    server = Server(config=config)
    try:
        asyncio.run(_serve(server, args.config, lambda: config_from_args(args)))
    except KeyboardInterrupt:
        pass
    _exit_without_stuck_threads()
    return 0


def _exit_without_stuck_threads() -> None:
    """End the process even when a model's call never returned.

    The server has stopped (every request answered, the backend waited its bound);
    a thread still running now is a hung model call, and the interpreter would
    wait for it at exit forever (thread pools are joined then). Leave without it.
    """
    import logging
    import os
    import threading

    stuck = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        logging.getLogger("inferential.server").error("exiting with threads still running: %s", ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _serve(server, config_path: Optional[str], load: Callable[[], InferentialConfig]) -> None:
    from inferential.server.http import start_http
    from inferential.server.reload import install_reload

    http = start_http(server)
    try:
        # Always installed: SIGHUP without --config is logged instead of killing the server.
        # The reload re-applies command-line overrides, which keep winning over the file.
        install_reload(server, config_path, load)
        await server.run()
    finally:
        if http is not None:
            http.close()


def _floats(text: str) -> list[float]:
    """ "30,40,50" -> [30.0, 40.0, 50.0]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "demo":
        if args.chunk:
            from inferential.demo_chunks import run_chunk_demo

            if args.request_at is None:
                args.request_at = args.chunk // 2
            return run_chunk_demo(args)
        from inferential.demo import run_demo

        args.scheduler = args.scheduler or "deadline_aware"
        return run_demo(args)
    if args.command == "keys":
        if args.keys_command != "generate":
            parser.parse_args(["keys", "--help"])
        import zmq

        public, secret = zmq.curve_keypair()
        # Quoted: Z85 uses YAML indicators (#, &, *, !, {, ...); it never uses a single quote.
        print(f"public_key: '{public.decode()}'")
        print(f"secret_key: '{secret.decode()}'  # to this machine only")
        return 0
    if args.command == "top":
        from inferential.top import run_top

        return run_top(args.server, interval_s=args.interval, once=args.once, window_s=args.window)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
