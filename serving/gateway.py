"""The local gateway: nginx in front of the model servers, rendered from a ``RolloutSpec`` and a ``TrafficState``.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx

from kfrelease.config import Settings
from kfrelease.errors import StackError
from kfrelease.rollout.spec import RolloutSpec, RolloutSpecError, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.service import Service

log = logging.getLogger(__name__)

#: Which predictor slot (stack service ``predictor-<stage>``) serves which role.
ROLE_STAGE = {"primary": "production", "shadow": "staging", "canary": "canary"}
#: Predictor port offsets from ``settings.port("predictor")`` (docs/CONTRACTS.md).
STAGE_PORT_OFFSET = {"production": 0, "staging": 1, "canary": 2}
HEALTH_PATH = "/gateway/healthz"
#: Largest request body the gateway accepts (kept in memory: the mirror needs the whole body).
MAX_BODY = "8m"
RELOAD_TIMEOUT = 20.0
#: The shadow's model server runs at a lower CPU priority: on one machine its mirrored work must yield to
#: the primary's (on a cluster it has its own pods).
SHADOW_NICE = ["nice", "-n", "10"]


class GatewayError(StackError):
    """The gateway config could not be checked, installed or loaded; the running config is unchanged."""


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def predictor_port(settings: Settings, stage: str) -> int:
    return settings.port("predictor") + STAGE_PORT_OFFSET[stage]


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


def check_state(spec: RolloutSpec, state: TrafficState) -> None:
    """Refuse a traffic state the gateway cannot serve, before anything is written."""
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


def render_nginx_config(
    spec: RolloutSpec,
    state: TrafficState,
    *,
    listen_port: int,
    backends: dict[str, int],
    prefix: Path,
    run_as_root: bool | None = None,
    client_keepalive: bool = False,
) -> str:
    """The nginx config for a traffic state. ``backends`` maps role (primary, shadow, canary) to the port of
    the model server playing it. Pure: same inputs, same text."""
    check_state(spec, state)
    for role in state_roles(state):
        if role not in backends:
            raise GatewayError(f"no backend port for the {role} ({getattr(state, role)}); nothing was changed")
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    prefix = Path(prefix)
    tmp = prefix / "tmp"
    roles = state_roles(state)
    weight = state.canary_weight if state.canary else 0
    mirror = effective_mirror_percent(spec, state)

    upstreams = "\n".join(
        f"    upstream kf_{role} {{\n        server 127.0.0.1:{backends[role]} max_fails=0;\n        keepalive 32;\n    }}"
        for role in roles
    )
    if not roles:
        route = '    map $kf_request_id $kf_backend { default ""; }'
    elif weight >= 100 or not state.primary:
        route = "    map $kf_request_id $kf_backend { default kf_canary; }"
    elif weight > 0:
        route = (
            '    split_clients "${kf_request_id}" $kf_backend {\n'
            f"        {_percent(weight)} kf_canary;\n"
            "        * kf_primary;\n    }"
        )
    else:
        route = "    map $kf_request_id $kf_backend { default kf_primary; }"
    if state.shadow and 0 < mirror < 100:
        mirror_map = (
            '    split_clients "mirror-${kf_request_id}" $kf_mirror {\n'
            f"        {_percent(mirror)} 1;\n"
            '        * "";\n    }'
        )
    else:
        mirror_map = f'    map $kf_request_id $kf_mirror {{ default "{1 if state.shadow and mirror > 0 else ""}"; }}'

    versions = {role: getattr(state, role) for role in ("primary", "shadow", "canary")}
    generation = hashlib.sha256(json.dumps([asdict(state), backends, mirror], sort_keys=True).encode()).hexdigest()[:16]
    proxy_common = """            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header x-request-id $kf_request_id;
            proxy_set_header ce-id $kf_request_id;"""
    client_timeouts = "\n            proxy_connect_timeout 2s;\n            proxy_read_timeout 60s;"
    shadow_location = ""
    mirror_directives = ""
    if state.shadow:
        mirror_directives = "            mirror /_kf_shadow;\n            mirror_request_body on;\n"
        shadow_location = f"""
        # Mirrored copies: nginx discards their responses; errors here never reach the client.
        location = /_kf_shadow {{
            internal;
            if ($kf_mirror = "") {{ return 204; }}
{proxy_common}
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            # the client has its answer and closes; the shadow must still get and finish the copy
            proxy_ignore_client_abort on;
            proxy_pass http://kf_shadow$request_uri;
        }}"""
    if roles:
        predict = f"""{mirror_directives}{proxy_common}{client_timeouts}
            proxy_hide_header x-request-id;
            add_header x-request-id $kf_request_id always;
            proxy_pass http://$kf_backend;"""
        other = f"""{proxy_common}{client_timeouts}
            proxy_hide_header x-request-id;
            add_header x-request-id $kf_request_id always;
            proxy_pass http://{"kf_primary" if state.primary else "kf_canary"};"""
    else:
        predict = other = "            return 503;"
    user = "user nobody nogroup;\n" if run_as_root else ""
    if client_keepalive:
        client_keepalive = "    keepalive_requests 100000;\n    keepalive_timeout 65s;"
    else:
        # Each client connection carries one request (``Connection: close``). On ``nginx -s reload`` the old
        # workers close their idle keep-alive connections at once; a request a client sends on such a
        # connection at that instant is lost (the client sees a reset). Without client keep-alive every
        # request is accepted from the listening socket the new workers share, and the old workers finish
        # the ones they hold: no request fails during a weight change. Upstream keep-alive stays on.
        client_keepalive = "    keepalive_timeout 0;"
    return f"""# Rendered by kfrelease.serving.gateway from the rollout spec of {spec.model!r}; do not edit.
# generation {generation}: primary={versions["primary"]} canary={versions["canary"]}@{weight}% shadow={versions["shadow"]}@{mirror:g}%
{user}worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp / "client_body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    # Bodies stay in memory (the mirror needs the whole body; workers never write files).
    client_max_body_size {MAX_BODY};
    client_body_buffer_size {MAX_BODY};
    proxy_max_temp_file_size 0;
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;
{client_keepalive}
    server_tokens off;
    default_type application/json;

    # One id per client request: x-request-id, else ce-id, else a fresh random one.
    map $http_x_request_id $kf_request_id {{
        "" $kf_ce_id;
        default $http_x_request_id;
    }}
    map $http_ce_id $kf_ce_id {{
        "" $request_id;
        default $http_ce_id;
    }}
{route}
{mirror_map}

{upstreams}

    server {{
        listen 127.0.0.1:{listen_port};
        error_page 413 = @kf_too_large;
        error_page 502 503 504 = @kf_unavailable;

        location = {HEALTH_PATH} {{
            return 200 '{{"status": "ok", "generation": "{generation}"}}';
        }}
        location ~ ^/v[12]/models/[^/]+(:predict|/infer)$ {{
{predict}
        }}
        location / {{
{other}
        }}{shadow_location}
        location @kf_too_large {{
            add_header x-request-id $kf_request_id always;
            return 413 '{{"error": "request body is larger than {MAX_BODY.upper()}B; send fewer instances per request"}}';
        }}
        location @kf_unavailable {{
            add_header x-request-id $kf_request_id always;
            return 503 '{{"error": "no model server is available for this request; check `kfrelease serve status`"}}';
        }}
    }}
}}
"""


def config_generation(config: str) -> str:
    for line in config.splitlines():
        if line.startswith("# generation "):
            return line.split()[2].rstrip(":")
    raise GatewayError("rendered gateway config has no generation line")


def state_roles(state: TrafficState) -> list[str]:
    return [role for role in ("primary", "shadow", "canary") if getattr(state, role)]


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


def _state_path(settings: Settings) -> Path:
    return gateway_dir(settings) / "traffic.json"


def read_gateway_record(settings: Settings) -> dict | None:
    try:
        return json.loads(_state_path(settings).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise GatewayError(
            f"gateway state {_state_path(settings)} is unreadable ({exc}); remove it and apply again"
        ) from None


def _prepare_gateway(settings: Settings) -> None:
    prefix = gateway_dir(settings)
    _ensure_dirs(prefix)
    if not (prefix / "nginx.conf").exists():  # first start: nothing to route yet, every prediction gets 503
        text = render_nginx_config(
            load_rollout_spec(),
            TrafficState(primary=None),
            listen_port=settings.port("gateway"),
            backends={},
            prefix=prefix,
        )
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
    )


def wait_generation(settings: Settings, generation: str, timeout: float = RELOAD_TIMEOUT) -> None:
    """Wait until the gateway answers with the config of ``generation`` (a reload is asynchronous)."""
    url = settings.url("gateway", HEALTH_PATH)
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=1.0).json().get("generation")
            if last == generation:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise GatewayError(
        f"gateway did not load config {generation} within {timeout:.0f} s (it serves {last}); see its error log"
    )


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def wait_drained(master_pid: int, timeout: float = 60.0) -> None:
    """After a reload, wait until nginx's old workers have finished their in-flight requests and exited,
    so that a model server no longer routed to can be stopped without cutting a request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_children(master_pid)) <= 1:  # worker_processes 1
            return
        time.sleep(0.05)
    log.warning("old nginx workers of %d still run after %.0f s", master_pid, timeout)


# --- the traffic driver -----------------------------------------------------------------------------

PredictorCommand = Callable[[str, str, Path, int], list[str]]
ModelDirFor = Callable[[str], Path]


def default_predictor_command(settings: Settings, model: str) -> PredictorCommand:
    """The serving part's predictor CLI (docs/CONTRACTS.md, "Serving processes")."""

    def command(stage: str, version: str, model_dir: Path, port: int) -> list[str]:
        from kfrelease.serving.services import predictor_argv

        return predictor_argv(model_dir, model, stage, port, logger_url=settings.url("logsink", "/"))

    return command


def registry_model_dir(settings: Settings, model: str) -> ModelDirFor:
    """Download a registered version into ``services/models/<model>/<V>/`` (once) and return that directory."""

    def model_dir(version: str) -> Path:
        dest = settings.home / "services" / "models" / model / version
        if (dest / "model.joblib").exists() and (dest / "model.json").exists():
            return dest
        from kfrelease.registry import ModelRegistry  # the training part's registry
        from kfrelease.storage import store_for

        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ModelRegistry(store_for("serving", settings)).download(model, version, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        return dest

    return model_dir


class LocalGatewayDriver:
    """Applies a ``TrafficState`` to the embedded stack: starts the model servers it needs (one per stage,
    ``predictor-production|staging|canary``), renders the nginx config, checks it, reloads nginx
    gracefully, and stops model servers no longer needed. Implements ``kfrelease.rollout.traffic.TrafficDriver``.

    Promotion without dropped requests: when the production slot must change version, the primary is first
    routed to the slot that already serves that version (the canary), the production slot is restarted with
    it, then the primary moves back to the production slot.
    """

    def __init__(
        self,
        settings: Settings,
        spec: RolloutSpec | None = None,
        *,
        model_dir_for: ModelDirFor | None = None,
        predictor_command: PredictorCommand | None = None,
        predictor_env: dict[str, str] | None = None,
        predictor_health_path: str = "/v2/health/ready",
        client_keepalive: bool = False,
    ):
        self.settings = settings
        self.spec = spec or load_rollout_spec()
        self.model_dir_for = model_dir_for or registry_model_dir(settings, self.spec.model)
        self.predictor_command = predictor_command or default_predictor_command(settings, self.spec.model)
        self.predictor_env = predictor_env or {}
        self.predictor_health_path = predictor_health_path
        self.client_keepalive = client_keepalive
        self.prefix = gateway_dir(settings)
        self._routes: dict[str, str] = {}

    # TrafficDriver -----------------------------------------------------------------------------
    def current(self) -> TrafficState | None:
        rec = read_gateway_record(self.settings)
        return TrafficState(**rec["state"]) if rec else None

    def apply(self, state: TrafficState) -> None:
        check_state(self.spec, state)
        rec = read_gateway_record(self.settings) or {}
        slots: dict[str, str] = dict(rec.get("slots", {}))  # stage -> version running there
        self._routes = dict(rec.get("routes", {}))  # role -> stage it is routed to
        self._sync_slots(slots)
        wanted = {ROLE_STAGE[role]: getattr(state, role) for role in state_roles(state)}

        # 1. Load each wanted version into its slot when that slot serves no traffic now; a busy slot
        #    (promotion) waits until traffic has moved to the slot that already runs the version.
        deferred = []
        for stage, version in wanted.items():
            if slots.get(stage) == version:
                continue
            serving_clients = {r for r, st in self._routes.items() if st == stage} - {"shadow"}
            if stage in slots and serving_clients:  # a shadow's answers reach no client: replace it in place
                if version not in slots.values():
                    # not running anywhere: start it in a spare slot first, route there, then reload this one
                    spare = next(
                        (x for x in STAGE_PORT_OFFSET if x not in wanted and x not in self._routes.values()), None
                    )
                    if spare is None:
                        raise GatewayError(
                            f"cannot load {version} into the {stage} model server while it serves {slots[stage]} "
                            "and no spare model server is free; move traffic in steps; no traffic was moved"
                        )
                    self._stop_predictor(spare, slots)
                    self._start_predictor(spare, version, slots)
                deferred.append(stage)
                continue
            self._stop_predictor(stage, slots)
            self._start_predictor(stage, version, slots)
        # 2. Route with what runs now.
        self._route(state, slots)
        # 3. Reload the slots that were busy, then route to them.
        for stage in deferred:
            self._stop_predictor(stage, slots)
            self._start_predictor(stage, wanted[stage], slots)
        if deferred:
            self._route(state, slots)
        # 4. Stop model servers nothing routes to any more (old workers have drained by now).
        for stage in [s for s in slots if s not in wanted]:
            self._stop_predictor(stage, slots)
        self._save(state, slots)

    # internals ---------------------------------------------------------------------------------
    def _sync_slots(self, slots: dict[str, str]) -> None:
        for stage in list(slots):
            if not supervisor.service_status(self.settings, f"predictor-{stage}").healthy:
                slots.pop(stage)

    def _backends(self, state: TrafficState, slots: dict[str, str]) -> dict[str, int]:
        out = {}
        for role in state_roles(state):
            version = getattr(state, role)
            stage = ROLE_STAGE[role] if slots.get(ROLE_STAGE[role]) == version else None
            stage = stage or next((s for s, v in slots.items() if v == version), None)
            if stage is None:
                raise GatewayError(f"{role} version {version} is not running in any model server; no traffic was moved")
            out[role] = predictor_port(self.settings, stage)
        return out

    def _route(self, state: TrafficState, slots: dict[str, str]) -> None:
        backends = self._backends(state, slots)
        text = render_nginx_config(
            self.spec,
            state,
            listen_port=self.settings.port("gateway"),
            backends=backends,
            prefix=self.prefix,
            client_keepalive=self.client_keepalive,
        )
        self.install(text)
        ports = {predictor_port(self.settings, s): s for s in slots}
        self._routes = {role: ports[p] for role, p in backends.items()}
        self._save_partial()

    def install(self, text: str) -> None:
        """Check and install a config, then start nginx or reload it; waits until the config serves."""
        status = supervisor.service_status(self.settings, "gateway")
        previous = (self.prefix / "nginx.conf").read_text() if (self.prefix / "nginx.conf").exists() else None
        generation = config_generation(text)
        if status.healthy and previous == text:
            return  # already serving exactly this config: applying a state twice changes nothing
        conf = install_config(self.prefix, text)
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

    def _start_predictor(self, stage: str, version: str, slots: dict[str, str]) -> None:
        port = predictor_port(self.settings, stage)
        model_dir = self.model_dir_for(version)
        service = Service(
            name=f"predictor-{stage}",
            port=port,
            command=(SHADOW_NICE if stage == "staging" else [])
            + self.predictor_command(stage, version, Path(model_dir), port),
            health_path=self.predictor_health_path,
            group="serving",
            env={"KFRELEASE_MODEL_VERSION": version, **self.predictor_env},
            startup_timeout=90,
        )
        supervisor.start_service(self.settings, service)
        slots[stage] = version
        self._save_slots(slots)

    def _stop_predictor(self, stage: str, slots: dict[str, str]) -> None:
        supervisor.stop_service(self.settings, f"predictor-{stage}")
        slots.pop(stage, None)
        self._save_slots(slots)

    # the record: last applied state, which version each slot runs, which slot each role routes to
    def _write(self, doc: dict) -> None:
        path = _state_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def _save_slots(self, slots: dict[str, str]) -> None:
        doc = read_gateway_record(self.settings) or {}
        doc["slots"] = dict(slots)
        self._write(doc)

    def _save_partial(self) -> None:
        doc = read_gateway_record(self.settings) or {}
        doc["routes"] = dict(self._routes)
        self._write(doc)

    def _save(self, state: TrafficState, slots: dict[str, str]) -> None:
        doc = read_gateway_record(self.settings) or {}
        doc.update(
            state=asdict(state),
            slots=dict(slots),
            routes=dict(self._routes),
            spec_model=self.spec.model,
        )
        self._write(doc)

    def stop(self) -> list[str]:
        """Stop the gateway and every model server it started; forget the state."""
        rec = read_gateway_record(self.settings) or {}
        names = ["gateway"] + [f"predictor-{s}" for s in rec.get("slots", {})]
        stopped = supervisor.down(self.settings, names)
        _state_path(self.settings).unlink(missing_ok=True)
        return stopped
