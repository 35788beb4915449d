"""Server configuration: one pydantic model per section, unknown keys rejected by name.

The sections and defaults follow the published README; everything added is optional.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TransportConfig(_Section):
    # Loopback by default: a production bind address is a deliberate choice (docs/security.md).
    bind: str = "tcp://127.0.0.1:5555"
    recv_hwm: int = Field(2000, ge=1)
    send_hwm: int = Field(2000, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    heartbeat_ivl_ms: int = Field(1000, ge=0)
    heartbeat_timeout_ms: int = Field(5000, ge=0)
    # On shutdown, how long replies sent during the drain get to be read before the socket closes.
    close_grace_ms: int = Field(250, ge=0)
    # A connection that has not completed the ZMTP handshake (greeting, and CURVE when on)
    # in this time is closed: idle or half-open sockets cannot hold descriptors for long.
    handshake_timeout_ms: int = Field(5000, ge=0)
    # A second connection with the routing identity of a connected one (1.x robots use their
    # client id as routing identity): "handover" gives it the identity and closes the old
    # connection (a robot reconnecting after a network change is served at once);
    # "reject" refuses the newcomer while the first is connected (no one can cut a robot off).
    duplicate_identity: Literal["handover", "reject"] = "handover"
    # Per-connection token bucket on observations (None = off): past it an observation
    # is answered QUEUE_FULL with a retry hint, before any other work is spent on it.
    rate_limit_per_s: Optional[float] = Field(None, gt=0)
    rate_limit_burst: int = Field(100, ge=1)
    # Connections past their handshake at once (None = no cap beyond the descriptor limit):
    # over it a new connection is refused during its handshake (ZAP) and counted.
    max_connections: Optional[int] = Field(None, ge=1)
    # The socket on a native I/O thread (inferential_native, server-native/): "auto" uses it
    # when the module is built, "on" requires it, "off" keeps the pure-Python transport.
    native: Literal["auto", "on", "off"] = "auto"
    # On the native transport, with scheduling.admission "reject": observations that have
    # already waited in the module's queue longer than their budget allows (less the time
    # serving them still takes) are refused DEADLINE_UNMEETABLE (past request_ttl_ms: EXPIRED)
    # by the module, at a few microseconds each, instead of by the event loop at a whole
    # request's cost: an overloaded server keeps its CPU for what it can answer in time.
    native_shedding: bool = True

    @field_validator("native", mode="before")
    @classmethod
    def _native_switch(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean.
        return ("on" if value else "off") if isinstance(value, bool) else value


class SchedulingConfig(_Section):
    # edf: the best measured under overload (docs/scheduling.md, "Overload"): critical robots
    # first, what cannot be on time shed early. deadline_aware was the default before.
    strategy: str = "edf"
    max_queue_size: int = Field(1000, ge=1)
    request_ttl_ms: float = Field(5000.0, gt=0)
    overflow_policy: Literal["drop_oldest", "reject_newest"] = "drop_oldest"
    max_retries: int = Field(0, ge=0)
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    # deadline_aware weights (README: 45/25/15/15/10)
    cadence_weight: float = 45.0
    urgency_weight: float = 25.0
    age_weight: float = 15.0
    steps_weight: float = 15.0
    priority_weight: float = 10.0
    policy: Optional[str] = None
    # Largest priority number accepted (0 is highest); larger values are clamped.
    max_priority: int = Field(10, ge=0)
    # Per-robot cap on queued requests (fair share); None = max_queue_size. Over it,
    # overflow_policy decides: drop_oldest sheds that robot's own oldest request,
    # reject_newest refuses the new one (both answered QUEUE_FULL).
    per_client_queue_cap: Optional[int] = Field(None, ge=1)
    # A newer observation from the same robot for the same model supersedes its
    # queued one. None = the strategy's default (on for edf, off otherwise).
    coalesce: Optional[bool] = None
    # Requests that cannot meet their deadline: "reject" answers DEADLINE_UNMEETABLE
    # at once, "deprioritize" runs them after everything else, "off" ignores deadlines.
    # Judged from measured service times (nothing is judged before the first batch);
    # under overload the lowest priority gives way first. See inferential.scheduler.queued.
    # A request whose budget is shorter than the model's run time alone is never
    # rejected (that is a configuration mismatch, not load): it runs after the others.
    admission: Literal["reject", "deprioritize", "off"] = "reject"
    # Scheduling aims to finish this much before each deadline: the time a reply
    # takes to reach the robot once the server hands it to its socket.
    deadline_margin_ms: float = Field(1.0, ge=0)
    # Models on worker threads (local backend): the next batch is handed to the model's
    # thread this long before the running one is expected to end, so it starts the moment
    # the worker is free instead of after a trip through the event loop (~1 ms on a busy
    # 2-core host). Until a worker takes it, an observation that would change it (room
    # left, or a better priority or deadline) has it taken back and formed again.
    # 0: a batch is handed over only once a worker is free.
    dispatch_ahead_ms: float = Field(2.0, ge=0)
    # Python's GIL switch interval while the server runs (sys.setswitchinterval): how long
    # a model's thread finishing or starting a batch can wait for the event loop to let
    # go of the interpreter (Python's default is 5 ms). None: leave Python's setting.
    gil_switch_interval_ms: Optional[float] = Field(0.5, gt=0)
    # A result ready only after its request's deadline (margin included): "withhold" sends
    # DEADLINE_UNMEETABLE instead (a late action is worse than none; action chunks are
    # exempt), "send" sends the late OK. Counted as late_results_withheld.
    late_results: Literal["withhold", "send"] = "withhold"
    # Action chunks: the longest an OK reply's actions stay valid after the observation's
    # timestamp (its valid_until_ns, docs/protocol.md "Action chunks"); None = only the
    # chunk's own length at the robot's control rate limits it.
    action_max_age_ms: Optional[float] = Field(None, gt=0)

    @field_validator("admission", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `off` as the boolean false.
        return "off" if value is False else value


class ClientDefaults(_Section):
    latency_budget_ms: float = Field(50.0, gt=0)
    priority: int = Field(1, ge=0)


class KnownClient(_Section):
    id: str
    model: Optional[str] = None
    latency_budget_ms: Optional[float] = Field(None, gt=0)
    priority: Optional[int] = Field(None, ge=0)
    # When true the configured priority wins over what the robot sends.
    pin_priority: bool = False
    auth_token: Optional[str] = None
    # The robot's CURVE public key (Z85, 40 characters; `inferential keys generate`):
    # with auth.curve_secret_key set, only listed keys connect, each as this id only.
    curve_public_key: Optional[str] = Field(None, min_length=40, max_length=40)


class ClientsConfig(_Section):
    defaults: ClientDefaults = ClientDefaults()
    known: list[KnownClient] = []
    accept_unknown: bool = True
    # Robots tracked at once (cadence, last status, /status lines); past it the one
    # silent longest is forgotten (client ids are self-declared: an attacker can invent many).
    max_tracked: int = Field(10000, ge=1)

    # id -> the first entry with it, for the list it was built from (admission asks several
    # times per observation: a scan of a configured fleet each time would grow with it).
    _index: Optional[tuple[list[KnownClient], int, dict[str, KnownClient]]] = PrivateAttr(default=None)

    def get(self, client_id: str) -> Optional[KnownClient]:
        known = self.known
        if not known:
            return None
        index = self._index
        if index is None or index[0] is not known or index[1] != len(known):
            index = self._index = (known, len(known), {c.id: c for c in reversed(known)})
        return index[2].get(client_id)


class ResponseTrackingConfig(_Section):
    cadence_alpha: float = Field(0.3, gt=0, le=1)
    disconnect_timeout_s: float = Field(10.0, gt=0)


class MetricsConfig(_Section):
    ring_buffer_size: int = Field(10000, ge=10)
    # HTTP endpoint serving /metrics (Prometheus), /healthz and /readyz; None = off.
    http_port: Optional[int] = Field(None, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    # Robots with series of their own (the `client` label); known clients first, then
    # the first seen; the rest share client="_other". A robot's series go when it is
    # unregistered, freeing its place.
    max_robot_series: int = Field(200, ge=0)


class AuthConfig(_Section):
    # A token every robot must send (auth_token); per-robot tokens in clients.known win.
    token: Optional[str] = None
    # The server's CURVE secret key (Z85, 40 characters): encryption on, and only robots
    # whose public key is in clients.known[].curve_public_key connect. Needs a restart.
    curve_secret_key: Optional[str] = Field(None, min_length=40, max_length=40)


class ModelConfig(_Section):
    name: str
    # "package.module:Attr": a Model subclass, a factory, or a plain callable.
    target: str
    max_batch_size: Optional[int] = Field(None, ge=1)
    # Batches of this model that may run at once (local backend: worker threads;
    # Ray backend: per replica, so num_replicas * concurrency in all).
    concurrency: int = Field(1, ge=1)
    # Keyword arguments for the model's constructor.
    options: dict[str, Any] = {}
    # Ray backend (deploy mode)
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Serve's per-replica cap on calls in flight. Each call carries a whole batch,
    # so this counts batches; None = concurrency.
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    # A replica whose batch has run this long fails Serve's health check and is
    # replaced; None = 3 * timeout_s.
    hung_after_s: Optional[float] = Field(None, gt=0)


class RayConfig(_Section):
    # None: start an embedded local Ray (and stop it on shutdown);
    # "auto" or "ray://host:port": use an existing cluster and leave it running.
    address: Optional[str] = None
    namespace: str = "inferential"
    num_cpus: Optional[int] = Field(None, ge=1)
    # Applications to attach to by name, in addition to models deployed from `models`.
    attach: list[str] = []
    # Deadline of one call to an attached application (deployed models: timeout_s).
    call_timeout_s: float = Field(10.0, gt=0)
    # Embedded cluster only: keep Ray's token authentication on, with a token held
    # in this process's environment when none is configured (RAY_AUTH_MODE wins).
    token_auth: bool = True
    # Batches with at most this many tensor bytes use Serve's direct gRPC transport
    # (faster for small payloads); larger ones go through the object store. 0 = never.
    grpc_max_bytes: int = Field(512 * 1024, ge=0)
    # Calls that lose their replica (node or actor death) are sent again this many times.
    replica_failure_retries: int = Field(1, ge=0)
    # How often health() is refreshed from serve.status().
    health_interval_s: float = Field(2.0, gt=0)
    # Batches go to replicas on this machine over their own Unix socket (docs/ray.md,
    # "The direct data path"); Serve still deploys, checks and replaces them. False:
    # every batch is a Serve handle call.
    direct: bool = True
    # Models always called through Serve handles (for comparison, as bench-ray does).
    handle_models: list[str] = []


class LoggingConfig(_Section):
    level: str = "INFO"
    json_format: bool = Field(False, alias="json")


class InferentialConfig(_Section):
    transport: TransportConfig = TransportConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    clients: ClientsConfig = ClientsConfig()
    response_tracking: ResponseTrackingConfig = ResponseTrackingConfig()
    metrics: MetricsConfig = MetricsConfig()
    auth: AuthConfig = AuthConfig()
    # A backend registered by that name (built-ins: local, ray; see
    # inferential.dispatch.registry). An unknown name is refused when the server is built.
    backend: str = "local"
    models: list[ModelConfig] = []
    # The Ray backend's section (where 1.x had it).
    ray: RayConfig = RayConfig()
    # The sections of other registered backends, by backend name; each backend
    # validates its own (Backend.from_config).
    backends: dict[str, dict[str, Any]] = {}
    logging: LoggingConfig = LoggingConfig()

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model '{m.name}' is listed twice")
            seen.add(m.name)
        return models

    @model_validator(mode="after")
    def _known_ids_unique(self) -> "InferentialConfig":
        ids = [c.id for c in self.clients.known]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"clients.known lists {sorted(dup)} more than once")
        return self
