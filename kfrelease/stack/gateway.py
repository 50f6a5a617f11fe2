"""The local gateway: nginx in front of the model servers, keyed by model, rendered from each model's
``RolloutSpec`` and ``TrafficState`` (``templates/gateway.nginx.j2``, Jinja2).

- ``/v1/models/<name>:predict``, ``/v2/models/<name>/infer`` and the other ``/v[12]/models/<name>...`` paths
  (ready, metadata) go to that model's own primary, canary and shadow; every model has its own traffic
  state (``traffic.json``: ``models.<name>``). An unknown model gets a JSON 404 naming the models served;
  ``GET /v1/models`` lists them. A call a config does not route goes to the hold, which asks the gateway
  again until a worker of the installed config answers it (a reload's old workers still accept for a moment:
  ``kfrelease.stack.hold``).
- a role with several replicas is an upstream with several servers; a prediction that fails on one (refused,
  reset, 502/503) is sent on to the next (``proxy_next_upstream ... non_idempotent``: a prediction is
  idempotent): one replica's crash fails no request. Production runs on ``KFRELEASE_PRODUCTION_REPLICAS``
  (default 2) model servers, or more when a rollout spec's ``serving.min_replicas`` asks for more.
- when every replica of the role failed a prediction (all killed, or the only one restarting), the last
  server of the role's upstream is the **hold** (an nginx ``backup`` server, ``kfrelease.stack.hold``): it
  sends the prediction again to the role's replicas until one answers, for at most
  ``KFRELEASE_GATEWAY_HOLD_SECONDS`` (default 30 s), while the watchdog restarts them. Other calls (ready,
  metadata) are not held: they answer what is true now.
- **primary** answers clients; **canary** answers ``canary_weight`` percent of them, chosen by hashing the
  request id with ``split_clients`` (nginx ngx_http_split_clients_module, MurmurHash2 of the key).
- **shadow** gets a copy of each prediction request (nginx ``mirror``, ngx_http_mirror_module); its
  answers are discarded by nginx (mirror subrequests' responses are ignored). Below 100 % a second
  ``split_clients`` on the request id decides which requests are mirrored.
- Every client request gets one id: the client's ``x-request-id``, else its ``ce-id``, else nginx's
  ``$request_id``. The same id goes to primary, canary and shadow as ``x-request-id`` and ``ce-id`` (the
  KServe logger takes ``ce-id`` as the CloudEvent id) and back to the client as ``x-request-id``.
- A new config is written to a temporary file, checked with ``nginx -t``, moved into place and loaded with
  ``nginx -s reload`` (old workers finish in-flight requests). A config that fails the check changes nothing.
- nginx listens on 127.0.0.1 only, runs in the foreground under the stack supervisor, with its own
  prefix, pid file, logs and temp paths under ``services/gateway/``; it never needs privileges (when the
  stack runs as root, its workers drop to ``nobody``; bodies and responses are kept in memory so the
  workers touch no file).

Over 500 lines: rendering, applying (nginx reload, drain) and the record of every model's routes are one
transaction per apply; a split is due with the next concern added here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import jinja2
import psutil
from tenacity import (
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from kfrelease import httpcalls
from kfrelease.config import Settings, setting
from kfrelease.errors import StackError
from kfrelease.locks import exclusive_lock
from kfrelease.rollout.spec import RolloutSpec, RolloutSpecError, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.hosts import HostCommand, ModelServers
from kfrelease.stack.model_files import local_model_dir
from kfrelease.stack.service import Service
from kfrelease.stack.slots import ROLES, predictor_port, production_replicas, slot_named, slots_for

log = logging.getLogger(__name__)

__all__ = ["GatewayError", "LocalGatewayDriver", "ModelRoute", "predictor_port", "render_nginx_config"]

HEALTH_PATH = "/gateway/healthz"
#: Largest request body the gateway accepts (kept in memory: the mirror needs the whole body).
MAX_BODY = "8m"
RELOAD_TIMEOUT = 20.0
#: Model names the gateway routes (they become part of nginx location regexes).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: A prediction that fails on one replica (refused, reset, 502/503) is sent on to the next replica, and after
#: the last one to the hold: predictions are idempotent, so POST may be retried (``non_idempotent``,
#: ngx_http_upstream_module). ``proxy_next_upstream_tries`` is rendered per location.
RETRY = """            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_timeout 10s;"""
#: The longest a model server may take to answer one prediction (the hold's deadline comes on top of it).
READ_TIMEOUT = 60


class GatewayError(StackError):
    """The gateway config could not be checked, installed or loaded; the running config is unchanged."""


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def gateway_dir(settings: Settings) -> Path:
    return settings.service_dir("gateway")


def _percent(value: float) -> str:
    # split_clients takes at most two decimals (ngx_atofp(..., 2) in ngx_http_split_clients_module.c)
    text = f"{round(float(value), 2):.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def effective_mirror_percent(spec: RolloutSpec, state: TrafficState) -> float:
    """Share of requests mirrored to the shadow: the state's ``mirror_percent`` when set, else the spec's."""
    if not state.shadow:
        return 0.0
    return float(state.mirror_percent or spec.shadow.mirror_percent)


def check_model_name(name: str) -> None:
    if not MODEL_NAME.match(name or ""):
        raise RolloutSpecError(
            f"model name {name!r} cannot be routed: use letters, digits, '.', '_' or '-' (at most 63, starting "
            "with a letter or digit); no traffic was moved"
        )


def check_state(spec: RolloutSpec, state: TrafficState) -> None:
    """Refuse a traffic state the gateway cannot serve, before anything is written."""
    check_model_name(spec.model)
    if not state.primary and (state.shadow or (state.canary and state.canary_weight < 100)):
        raise RolloutSpecError(
            "traffic state has no primary version; only a canary at weight 100 may serve alone; no traffic was moved"
        )
    for role in ("shadow", "canary"):
        v = getattr(state, role)
        if v and v == state.primary:
            raise RolloutSpecError(
                f"{role} version {v} is also the primary; give a different version; no traffic was moved"
            )
    mirror = effective_mirror_percent(spec, state)
    if round(mirror, 2) != round(mirror, 6):
        raise RolloutSpecError(f"mirror percent {mirror} has more than two decimals; no traffic was moved")


def state_roles(state: TrafficState) -> list[str]:
    return [role for role in ROLES if getattr(state, role)]


@dataclass(frozen=True)
class ModelRoute:
    """One model's routes: its traffic state, the share mirrored to its shadow, and the ports of the model
    servers playing each of its roles (several ports: replicas, tried in turn)."""

    name: str
    state: TrafficState
    mirror_percent: float
    backends: dict[str, list[int]]

    @classmethod
    def of(cls, spec: RolloutSpec, state: TrafficState, backends: dict[str, list[int] | int]) -> ModelRoute:
        check_state(spec, state)
        ports = {role: [p] if isinstance(p, int) else list(p) for role, p in backends.items()}
        for role in state_roles(state):
            if not ports.get(role):
                raise GatewayError(
                    f"no backend port for the {role} ({getattr(state, role)}) of {spec.model}; nothing was changed"
                )
        return cls(spec.model, state, effective_mirror_percent(spec, state), ports)

    def as_record(self) -> dict:
        return {"state": asdict(self.state), "mirror_percent": self.mirror_percent, "backends": self.backends}

    @classmethod
    def from_record(cls, name: str, rec: dict) -> ModelRoute:
        return cls(name, TrafficState(**rec["state"]), float(rec["mirror_percent"]), dict(rec["backends"]))


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("kfrelease.stack", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # nginx config, not HTML; every value is checked (names, numbers) before rendering
)

PROXY_COMMON = (
    """            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header x-request-id $kf_request_id;
            proxy_set_header ce-id $kf_request_id;
            proxy_connect_timeout 2s;
"""
    + RETRY
    + """
            proxy_hide_header x-request-id;
            add_header x-request-id $kf_request_id always;"""
)


def _model_view(i: int, route: ModelRoute, held: bool) -> dict:
    state = route.state
    check_model_name(route.name)
    weight = state.canary_weight if state.canary else 0
    if weight >= 100 or not state.primary:
        mode = "canary"
    elif weight > 0:
        mode = "split"
    else:
        mode = "primary"
    mirror = route.mirror_percent if state.shadow else 0.0
    return {
        "name": route.name,
        "id": f"kf_m{i}",
        "regex": re.escape(route.name).replace("\\-", "-"),
        "state": state,
        "weight": weight,
        "weight_text": _percent(weight),
        "route": mode,
        "other": "primary" if state.primary else "canary",
        "mirror_split": bool(state.shadow) and 0 < mirror < 100,
        "mirror_all": bool(state.shadow) and mirror >= 100,
        "mirror_text": _percent(mirror),
        "replicas": len(route.backends.get("primary", [])),
        "upstreams": {role: route.backends[role] for role in state_roles(state)},
        # the ports the hold tries for each upstream a prediction may be routed to
        "answering": {
            role: " ".join(map(str, route.backends[role])) for role in ("primary", "canary") if getattr(state, role)
        },
        # every replica of the routed role, then the hold (when there is one)
        "predict_tries": max(len(route.backends[r]) for r in ("primary", "canary") if getattr(state, r)) + held,
        "other_tries": len(route.backends["primary" if state.primary else "canary"]),
    }


def render_nginx_config(
    routes: list[ModelRoute],
    *,
    listen_port: int,
    prefix: Path,
    run_as_root: bool | None = None,
    client_keepalive: bool = False,
    hold_port: int | None = None,
    hold_seconds: float | None = None,
) -> str:
    """The nginx config for every model's routes (``templates/gateway.nginx.j2``). Pure: same inputs, same
    text; a model with no primary and no canary is not routed (its paths answer 404), unless its state says
    why it is ``unavailable`` (a withdrawn first model): then its paths answer 503 with that reason. ``hold_port``: the
    hold's port (``kfrelease.stack.hold``), the last server of every primary and canary upstream, holding
    a prediction up to ``hold_seconds`` (default ``KFRELEASE_GATEWAY_HOLD_SECONDS``); no ``hold_port``: no hold
    (a prediction no replica answers gets a 503)."""
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    if hold_seconds is None:
        hold_seconds = setting("KFRELEASE_GATEWAY_HOLD_SECONDS")
    withdrawn = sorted((r for r in routes if not r.state.versions() and r.state.unavailable), key=lambda r: r.name)
    routes = sorted((r for r in routes if r.state.primary or r.state.canary), key=lambda r: r.name)
    generation = hashlib.sha256(
        json.dumps([[r.name, r.as_record()] for r in [*routes, *withdrawn]], sort_keys=True).encode()
    ).hexdigest()[:16]
    served = [r.name for r in routes]
    for r in withdrawn:
        check_model_name(r.name)
    return _TEMPLATES.get_template("gateway.nginx.j2").render(
        generation=generation,
        models=[_model_view(i, r, hold_port is not None) for i, r in enumerate(routes)],
        unavailable=[
            {"regex": re.escape(r.name).replace("\\-", "-"), "message": nginx_json_text(r.state.unavailable)}
            for r in withdrawn
        ],
        hold_port=hold_port,
        read_timeout=READ_TIMEOUT,
        predict_read_timeout=int(READ_TIMEOUT + (hold_seconds if hold_port is not None else 0)),
        # a call the hold asks the gateway again may be a prediction held in turn
        resolve_read_timeout=int(READ_TIMEOUT + 2 * hold_seconds),
        run_as_root=run_as_root,
        prefix=str(Path(prefix)),
        max_body=MAX_BODY,
        client_keepalive=client_keepalive,
        listen_port=int(listen_port),
        health_path=HEALTH_PATH,
        served_json=json.dumps(served),
        served_text=", ".join(served) or "none yet (run `kfrelease serve`)",
        proxy_common=PROXY_COMMON,
    )


#: Characters a reason may not carry into an nginx ``return`` text inside a JSON string (quotes end the nginx
#: or the JSON string, a backslash escapes, ``$`` starts an nginx variable, braces are nginx blocks).
_NGINX_UNSAFE = str.maketrans({'"': "`", "'": "`", "\\": "/", "$": "USD ", "{": "(", "}": ")"})


def nginx_json_text(text: str, limit: int = 600) -> str:
    """``text`` as it can stand inside ``return 503 '{"error": "..."}'``: one line, no character nginx or JSON
    would read as syntax, at most ``limit`` characters."""
    one = " ".join(str(text).split()).translate(_NGINX_UNSAFE)
    one = "".join(ch for ch in one if ch.isprintable())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def config_generation(config: str) -> str:
    for line in config.splitlines():
        if line.startswith("# generation "):
            return line.split()[2].rstrip(":")
    raise GatewayError("rendered gateway config has no generation line")


def _nginx(prefix: Path, conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            nginx_binary(),
            "-p",
            f"{prefix}/",
            "-c",
            str(conf),
            "-e",
            str(prefix / "logs" / "error.log"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _ensure_dirs(prefix: Path) -> None:
    for d in (prefix, prefix / "logs", prefix / "tmp"):
        d.mkdir(parents=True, exist_ok=True)


def check_config(prefix: Path, text: str) -> None:
    """``nginx -t`` on a config text; raises ``GatewayError`` with nginx's message if it is refused."""
    _ensure_dirs(prefix)
    candidate = prefix / "nginx.conf.candidate"
    candidate.write_text(text)
    try:
        proc = _nginx(prefix, candidate, "-t", "-q")
        if proc.returncode != 0:
            msg = " ".join((proc.stderr or proc.stdout).split())
            raise GatewayError(f"nginx refused the new gateway config ({msg}); the running config is unchanged")
    finally:
        candidate.unlink(missing_ok=True)


def install_config(prefix: Path, text: str) -> Path:
    """Check, then atomically replace ``nginx.conf``. Returns its path."""
    check_config(prefix, text)
    conf = prefix / "nginx.conf"
    tmp = prefix / "nginx.conf.tmp"
    tmp.write_text(text)
    os.replace(tmp, conf)
    return conf


# --- the gateway as a stack service -----------------------------------------------------------------


def _prepare_gateway(settings: Settings) -> None:
    prefix = gateway_dir(settings)
    _ensure_dirs(prefix)
    if not (prefix / "nginx.conf").exists():  # first start: nothing to route yet, every prediction gets 404
        text = render_nginx_config([], listen_port=settings.port("gateway"), prefix=prefix)
        install_config(prefix, text)


def gateway_service(settings: Settings) -> Service:
    """The nginx gateway as a service of the ``serving`` group (foreground nginx; ``daemon off`` in its config)."""
    prefix = gateway_dir(settings)
    return Service(
        name="gateway",
        port=settings.port("gateway"),
        command=[
            nginx_binary(),
            "-p",
            f"{prefix}/",
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "logs" / "error.log"),
        ],
        health_path=HEALTH_PATH,
        prepare=_prepare_gateway,
        group="serving",
        executables={"nginx": "nginx"},
        startup_timeout=20,
        restart=True,
    )


def _served_generation(url: str) -> str | None:
    try:
        return httpcalls.get(url, timeout=1.0).json().get("generation")
    except (httpx.HTTPError, ValueError):
        return None


def wait_generation(settings: Settings, generation: str, timeout: float = RELOAD_TIMEOUT) -> None:
    """Wait until the gateway answers with the config of ``generation`` (a reload is asynchronous)."""
    polls = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.02, exp_base=1.5, max=0.25),
        retry=retry_if_result(lambda served: served != generation),
    )
    try:
        polls(_served_generation, settings.url("gateway", HEALTH_PATH))
    except RetryError as exc:
        raise GatewayError(
            f"gateway did not load config {generation} within {timeout:.0f} s (it serves "
            f"{exc.last_attempt.result()}); see its error log"
        ) from None


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def wait_drained(master_pid: int, timeout: float = 60.0) -> None:
    """After a reload, wait until nginx's old workers have finished their in-flight requests and exited,
    so that a model server no longer routed to can be stopped without cutting a request."""
    polls = Retrying(
        stop=stop_after_delay(timeout), wait=wait_fixed(0.05), retry=retry_if_result(lambda workers: len(workers) > 1)
    )  # worker_processes 1
    try:
        polls(_children, master_pid)
    except RetryError:
        log.warning("old nginx workers of %d still run after %.0f s", master_pid, timeout)


# --- the record of every model's routes --------------------------------------------------------------


def _state_path(settings: Settings) -> Path:
    return gateway_dir(settings) / "traffic.json"


def read_gateway_record(settings: Settings) -> dict | None:
    """``{"models": {name: {"state", "mirror_percent", "backends", "slots"}}}`` as last applied, or None."""
    try:
        return json.loads(_state_path(settings).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise GatewayError(
            f"gateway state {_state_path(settings)} is unreadable ({exc}); remove it and apply again"
        ) from None


def model_states(settings: Settings) -> dict[str, TrafficState]:
    """Every routed model's traffic state, by model name."""
    rec = read_gateway_record(settings) or {}
    return {name: TrafficState(**m["state"]) for name, m in sorted(rec.get("models", {}).items())}


def _write_record(settings: Settings, doc: dict) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    supervisor.write_whole(path, json.dumps(doc, indent=2, sort_keys=True))


def gateway_lock(settings: Settings):
    """One traffic change at a time on this stack (releases of different models apply in turn; each
    change takes a second or two). An flock: a holder that dies releases it."""
    return exclusive_lock(gateway_dir(settings) / "apply.lock")


# --- the traffic driver -----------------------------------------------------------------------------

ModelDirFor = Callable[[str, str], Path]


class LocalGatewayDriver:
    """Applies one model's ``TrafficState`` to the embedded stack. Implements
    ``kfrelease.rollout.traffic.TrafficDriver``.

    The model's versions go into the shared model servers of their roles (``kfrelease.stack.slots``:
    primary -> ``predictor-production`` and its replicas, shadow -> ``predictor-staging``, canary ->
    ``predictor-canary``), loaded in place; nginx is re-rendered with every model's routes and reloaded
    gracefully; versions no longer routed are unloaded once the old nginx workers have drained. Other
    models' versions, servers and routes are never touched.

    No request is dropped on a promotion: the new primary version replaces the old one inside the
    production server atomically (requests in flight finish on the old one).
    """

    def __init__(
        self,
        settings: Settings,
        spec: RolloutSpec | None = None,
        *,
        model_dir_for: ModelDirFor | None = None,
        host_command: HostCommand | None = None,
        host_env: dict[str, str] | None = None,
        client_keepalive: bool = False,
    ):
        self.settings = settings
        self.spec = spec or load_rollout_spec()
        if self.spec.model:  # a driver of no model (the packaged spec names none) can only stop everything
            check_model_name(self.spec.model)
        self.model = self.spec.model
        self.model_dir_for = model_dir_for or (lambda model, version: local_model_dir(settings, model, version))
        self.servers = ModelServers(settings, host_command, host_env)
        self.client_keepalive = client_keepalive
        self.prefix = gateway_dir(settings)

    def replicas(self, role: str) -> int:
        """Model servers playing ``role`` for this model: the primary on at least
        ``KFRELEASE_PRODUCTION_REPLICAS`` (default 2), the canary on the spec's ``serving.min_replicas``, the
        shadow on one."""
        if role == "shadow":
            return 1
        wanted = int(self.spec.serving.min_replicas)
        return max(wanted, production_replicas()) if role == "primary" else wanted

    # TrafficDriver -----------------------------------------------------------------------------
    def current(self) -> TrafficState | None:
        return model_states(self.settings).get(self.model)

    def apply(self, state: TrafficState) -> None:
        check_state(self.spec, state)
        placement = {role: slots_for(role, self.replicas(role)) for role in state_roles(state)}
        with gateway_lock(self.settings):
            rec = read_gateway_record(self.settings) or {}
            models = dict(rec.get("models", {}))
            before = set(models.get(self.model, {}).get("slots", {}))
            wanted = {slot.name: getattr(state, role) for role, slots in placement.items() for slot in slots}
            # 1. every version where its role needs it (in place: a server's other models are untouched); the
            # servers load at once (a first start of two replicas takes as long as one)
            self._put_all(wanted)
            # 2. route: every model's routes, this one's new
            route = ModelRoute.of(
                self.spec, state, {role: [s.port(self.settings) for s in slots] for role, slots in placement.items()}
            )
            models[self.model] = {**route.as_record(), "slots": wanted, "replicas": self.replicas("primary")}
            self._route(models)
            _write_record(self.settings, {**rec, "models": models})
            # 3. versions nothing routes to any more (the old nginx workers have drained by now)
            for name in sorted(before - set(wanted)):
                self.servers.remove(slot_named(name), self.model)

    def forget(self) -> None:
        """Stop routing this model and unload it from every model server (other models stay)."""
        with gateway_lock(self.settings):
            rec = read_gateway_record(self.settings) or {}
            models = dict(rec.get("models", {}))
            gone = models.pop(self.model, None)
            if gone is None:
                return
            self._route(models)
            _write_record(self.settings, {**rec, "models": models})
            for name in sorted(gone.get("slots", {})):
                self.servers.remove(slot_named(name), self.model)

    # internals ---------------------------------------------------------------------------------
    def _put_all(self, wanted: dict[str, str]) -> None:
        """Put each (slot name -> version) in place, the slots at once; the first failure is raised once every
        put has ended (each put that failed left its slot as it was)."""
        with ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="model-server") as pool:
            futures = [
                pool.submit(
                    self.servers.put, slot_named(name), self.model, version, self.model_dir_for(self.model, version)
                )
                for name, version in sorted(wanted.items())
            ]
        for future in futures:
            future.result()

    def _route(self, models: dict[str, dict]) -> None:
        routes = [ModelRoute.from_record(name, m) for name, m in models.items()]
        text = render_nginx_config(
            routes,
            listen_port=self.settings.port("gateway"),
            prefix=self.prefix,
            client_keepalive=self.client_keepalive,
            hold_port=self.settings.port("gateway-hold"),
        )
        self.install(text)

    def install(self, text: str) -> None:
        """Check and install a config, then start nginx or reload it; waits until the config serves."""
        status = supervisor.service_status(self.settings, "gateway")
        previous = (self.prefix / "nginx.conf").read_text() if (self.prefix / "nginx.conf").exists() else None
        generation = config_generation(text)
        if status.healthy and previous == text:
            return  # already serving exactly this config: applying a state twice changes nothing
        conf = install_config(self.prefix, text)
        from kfrelease.stack.serving import hold_service  # cycle: kfrelease.stack.serving imports this module

        supervisor.start_service(self.settings, hold_service(self.settings))  # "already running" when it is
        try:
            if status.healthy:
                proc = _nginx(self.prefix, conf, "-s", "reload")
                if proc.returncode != 0:
                    raise GatewayError(f"nginx reload failed: {' '.join(proc.stderr.split())}")
            else:
                supervisor.start_service(self.settings, gateway_service(self.settings))
            wait_generation(self.settings, generation)
            if status.healthy and status.pid:
                wait_drained(status.pid)
        except BaseException:
            if previous is not None:  # put the last good config back so a later restart serves it
                (self.prefix / "nginx.conf").write_text(previous)
            raise
        log.info("gateway serves config %s", generation)

    def stop(self) -> list[str]:
        """Stop the gateway and every model server; forget every model's routes."""
        with gateway_lock(self.settings):
            stopped = supervisor.down(self.settings, ["gateway", "gateway-hold"])
            stopped += self.servers.stop_all()
            _state_path(self.settings).unlink(missing_ok=True)
            (self.prefix / "nginx.conf").unlink(missing_ok=True)
        return stopped
