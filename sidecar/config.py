"""Configuration: YAML parsed once into typed, validated objects before anything runs.

Every problem is reported with its key path (``queries[0].interval: ...``) in one
:class:`ConfigError`; the CLI prints it and exits 2.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from sidecar.detectors import Detector, DetectorSpecError
from sidecar.detectors import available as available_detectors
from sidecar.detectors import build as build_detector
from sidecar.durations import format_duration, parse_duration

DEFAULT_LISTEN = "0.0.0.0:9710"
#: Prometheus refuses range queries with more points per series than this.
PROMETHEUS_MAX_POINTS = 11_000


class ConfigError(Exception):
    """One or more configuration problems, each as (key path, message)."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        if len(lines) == 1:
            return f"config error{where}: {lines[0]}"
        return f"{len(lines)} config errors{where}:\n" + "\n".join(f"  {line}" for line in lines)


# -- field types ---------------------------------------------------------------------------
def _duration(value: Any) -> float:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError(f"invalid duration {value!r}: give a unit, e.g. '{value}s' or '{value}m'")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:9710 or 127.0.0.1:9710, got {value!r}")
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as http://prometheus:9090, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL such as http://prometheus:9090, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"bad port in URL {value!r}") from None
    return value.rstrip("/")


ListenAddress = Annotated[str, BeforeValidator(_listen)]
Url = Annotated[str, BeforeValidator(_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Strict):
    username: str
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> "BasicAuth":
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        return self


class TLS(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> "TLS":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class PrometheusSettings(_Strict):
    url: Url
    timeout: Duration = 30.0
    retries: int = Field(2, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    bearer_token_file: Path | None = None
    basic_auth: BasicAuth | None = None
    tls: TLS = Field(default_factory=TLS)
    max_points_per_query: int = Field(PROMETHEUS_MAX_POINTS, ge=2, le=PROMETHEUS_MAX_POINTS)
    max_samples_per_request: int = Field(500_000, ge=1000)

    @field_validator("timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> "PrometheusSettings":
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise ValueError("set bearer_token_file or basic_auth, not both")
        return self


class ServerSettings(_Strict):
    listen: ListenAddress = DEFAULT_LISTEN


Counters = Literal["auto", "rate", "raw"]


class QueryDefaults(_Strict):
    interval: Duration = 30.0
    step: Duration = 30.0
    history: Duration = 6 * 3600.0
    detector: Any = None
    refit_interval: Duration | None = None
    series_ttl: Duration | None = None
    max_series: int = Field(10_000, ge=1)
    counters: Counters = "auto"


class QueryEntry(_Strict):
    name: str
    expr: str
    interval: Duration | None = None
    step: Duration | None = None
    history: Duration | None = None
    detector: Any = None
    refit_interval: Duration | None = None
    series_ttl: Duration | None = None
    max_series: int | None = Field(None, ge=1)
    counters: Counters | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if v != v.strip() or len(v) > 200 or any(c in v for c in "\n\r\t"):
            raise ValueError(f"must be a short single-line name without surrounding spaces, got {v!r}")
        return v

    @field_validator("expr")
    @classmethod
    def _expr(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()


class RawConfig(_Strict):
    prometheus: PrometheusSettings
    server: ServerSettings = Field(default_factory=ServerSettings)
    defaults: QueryDefaults = Field(default_factory=QueryDefaults)
    queries: list[QueryEntry] = Field(min_length=1)


# -- the resolved, ready-to-run configuration ------------------------------------------------
@dataclass(frozen=True)
class QuerySpec:
    """One query with every default applied; ``detector()`` builds a fresh, checked detector."""

    name: str
    expr: str
    interval: float
    step: float
    history: float
    detector_spec: Any
    detector_name: str
    refit_interval: float
    series_ttl: float
    max_series: int
    counters: str

    def detector(self) -> Detector:
        return build_detector(self.detector_spec)

    @property
    def history_points(self) -> int:
        return int(self.history // self.step)

    def describe(self) -> str:
        return (
            f"every {format_duration(self.interval)}, step {format_duration(self.step)}, "
            f"history {format_duration(self.history)}, detector {self.detector_name}"
        )


@dataclass(frozen=True)
class Config:
    prometheus: PrometheusSettings
    server: ServerSettings
    queries: tuple[QuerySpec, ...]
    source: str | None = None

    def with_overrides(self, *, prometheus_url: str | None = None, listen: str | None = None) -> "Config":
        """Apply the command-line overrides (validated like the file's values)."""
        problems: list[tuple[str, str]] = []
        prom, server = self.prometheus, self.server
        if prometheus_url is not None:
            try:
                prom = prom.model_copy(update={"url": _url(prometheus_url)})
            except ValueError as exc:
                problems.append(("--prometheus-url", str(exc)))
        if listen is not None:
            try:
                server = server.model_copy(update={"listen": _listen(listen)})
            except ValueError as exc:
                problems.append(("--listen", str(exc)))
        if problems:
            raise ConfigError(problems)
        return Config(prom, server, self.queries, self.source)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _known_keys() -> set[str]:
    keys: set[str] = set()
    for model in (RawConfig, PrometheusSettings, ServerSettings, QueryDefaults, QueryEntry, BasicAuth, TLS):
        keys.update(model.model_fields)
    return keys


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _path(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            close = difflib.get_close_matches(key, sorted(_known_keys()), n=1)
            msg = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "value_error":
            msg = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
        else:
            given = e.get("input")
            msg = e["msg"] + ("" if isinstance(given, (dict, list)) else f", got {given!r}")
        problems.append((path, msg))
    return problems


def _check_detector(spec: Any, path: str, problems: list[tuple[str, str]]) -> str | None:
    """The detector's registry name, or None after recording why the spec is wrong."""
    try:
        return build_detector(spec).name
    except DetectorSpecError as exc:
        problems.append((path + "".join(f".{p}" for p in exc.path), str(exc)))
    except TypeError as exc:  # a parameter of the wrong shape for the constructor
        problems.append((path, str(exc)))
    return None


def _detector_and_name_problems(data: Mapping[str, Any]) -> tuple[list[tuple[str, str]], dict[str, str | None]]:
    """Detector specs and query-name uniqueness, checked on the raw mapping.

    Done apart from the schema so that they are reported even when other keys are wrong:
    one run of check-config lists every problem in the file.
    """
    problems: list[tuple[str, str]] = []
    names: dict[str, str | None] = {}
    defaults = data.get("defaults")
    default_spec = defaults.get("detector") if isinstance(defaults, Mapping) else None
    names["defaults.detector"] = _check_detector(default_spec, "defaults.detector", problems)
    queries = data.get("queries")
    seen: dict[str, int] = {}
    for i, q in enumerate(queries if isinstance(queries, list) else []):
        if not isinstance(q, Mapping):
            continue
        name = q.get("name")
        if isinstance(name, str) and name.strip():
            if name in seen:
                problems.append((f"queries[{i}].name", f"duplicate query name {name!r} (also queries[{seen[name]}])"))
            seen.setdefault(name, i)
        if q.get("detector") is not None:
            names[f"queries[{i}].detector"] = _check_detector(q["detector"], f"queries[{i}].detector", problems)
    return problems, names


def _source(q: QueryEntry, i: int, key: str) -> str:
    """Key path of the value a query uses: its own, or the default it inherits."""
    return f"queries[{i}].{key}" if getattr(q, key) is not None else f"defaults.{key}"


def _resolve(raw: RawConfig, detector_names: dict[str, str | None]) -> tuple[tuple[QuerySpec, ...], list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    d = raw.defaults
    specs = []
    for i, q in enumerate(raw.queries):
        at = f"queries[{i}]"
        interval = q.interval if q.interval is not None else d.interval
        step = q.step if q.step is not None else d.step
        history = q.history if q.history is not None else d.history

        def src(key: str, q: QueryEntry = q, i: int = i) -> str:
            return _source(q, i, key)
        if interval < 1:
            problems.append((src("interval"), f"must be at least 1s, got {format_duration(interval)}"))
        if step <= 0:
            problems.append((src("step"), "must be a positive duration"))
            continue
        points = history / step
        if points < 3:
            problems.append((src("history"), f"must cover at least 3 steps of {format_duration(step)}, got {format_duration(history)}"))
        elif points > 1_000_000:
            problems.append((src("history"), f"{int(points)} points per series is too many: raise step or shorten history"))
        ttl = q.series_ttl if q.series_ttl is not None else d.series_ttl
        cadence = max(interval, step)  # a series gets a fresh score at most this often
        ttl = ttl if ttl is not None else max(300.0, 3 * cadence)
        if ttl < cadence:
            problems.append((src("series_ttl"), f"must be at least the interval and the step ({format_duration(cadence)}), or series would blink out between scores"))
        refit = q.refit_interval if q.refit_interval is not None else d.refit_interval
        det_name = detector_names.get(f"{at}.detector" if q.detector is not None else "defaults.detector")
        if refit is None and det_name in available_detectors():
            refit = available_detectors()[det_name].recommended_refit_interval
        own = q.detector is not None
        specs.append(
            QuerySpec(
                name=q.name,
                expr=q.expr,
                interval=interval,
                step=step,
                history=history,
                detector_spec=q.detector if own else d.detector,
                detector_name=det_name or "?",
                refit_interval=refit or 0.0,
                series_ttl=ttl,
                max_series=q.max_series if q.max_series is not None else d.max_series,
                counters=q.counters if q.counters is not None else d.counters,
            )
        )
    return tuple(specs), problems


_SECTION_ORDER = {"prometheus": 0, "server": 1, "defaults": 2, "queries": 3}


def _sort_key(problem: tuple[str, str]) -> list[Any]:
    """Document order: prometheus, server, defaults, queries; queries[2] before queries[10]."""
    parts = [p for p in re.split(r"[\[\].]+", problem[0]) if p]
    if not parts:
        return [(-1, "")]
    rest = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts[1:]]
    return [(_SECTION_ORDER.get(parts[0], 9), parts[0]), *rest]


def _check_files(raw: RawConfig) -> list[tuple[str, str]]:
    """Credentials and certificates must be readable now, not at the first query."""
    p = raw.prometheus
    files = {
        "prometheus.bearer_token_file": p.bearer_token_file,
        "prometheus.basic_auth.password_file": p.basic_auth.password_file if p.basic_auth else None,
        "prometheus.tls.ca_file": p.tls.ca_file,
        "prometheus.tls.cert_file": p.tls.cert_file,
        "prometheus.tls.key_file": p.tls.key_file,
    }
    return [(k, f"cannot read file {str(v)!r}") for k, v in files.items() if v is not None and not os.access(v, os.R_OK)]


def parse_config(data: Any, source: str | None = None) -> Config:
    """Validate an already-loaded mapping; raises :class:`ConfigError` listing every problem."""
    if data is None:
        raise ConfigError([("", "the config is empty: it needs at least 'prometheus.url' and one entry in 'queries'")], source)
    if not isinstance(data, Mapping):
        raise ConfigError([("", f"the config must be a mapping of keys, got {type(data).__name__}")], source)
    problems, detector_names = _detector_and_name_problems(data)
    try:
        raw = RawConfig.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc) + problems
        raise ConfigError(sorted(problems, key=_sort_key), source) from None
    specs, more = _resolve(raw, detector_names)
    problems += more + _check_files(raw)
    if problems:
        raise ConfigError(sorted(problems, key=_sort_key), source)
    return Config(raw.prometheus, raw.server, specs, source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file: {exc.strerror or exc}")], source) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"invalid YAML: {where}{problem}")], source) from None
    return parse_config(data, source)


