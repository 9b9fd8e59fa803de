"""One registry maps detector names to classes; built-ins register themselves, plugins come by entry point.

Third-party packages add detectors without touching this project::

    [project.entry-points."anomaly_sidecar.detectors"]
    my_detector = "my_package.module:MyDetector"
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, Mapping, TypeVar

from sidecar.detectors.base import Detector, ParamError

ENTRY_POINT_GROUP = "anomaly_sidecar.detectors"
#: The detector used when a query names none. The backtest evaluation in README explains the choice.
DEFAULT_DETECTOR = "adaptive"

_REGISTRY: dict[str, type[Detector]] = {}
_plugins_loaded = False
log = logging.getLogger(__name__)

D = TypeVar("D", bound=type[Detector])


def register_into(registry: dict[str, Any], cls: Any, kind: str = "detector") -> Any:
    """Add ``cls`` to ``registry`` under ``cls.name``; a name taken by another class is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    existing = registry.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"{kind} name {cls.name!r} is taken by {existing.__module__}.{existing.__name__}")
    registry[cls.name] = cls
    return cls


def register(cls: D) -> D:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    return register_into(_REGISTRY, cls)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Detector)):
                raise TypeError("not a subclass of sidecar.detectors.Detector")
            if not cls.name:
                cls.name = ep.name
            register(cls)
        except Exception as exc:  # a broken plugin must not take the sidecar down
            log.warning("detector plugin failed to load", extra={"fields": {"entry_point": ep.name, "error": exc}})


def available() -> dict[str, type[Detector]]:
    """All detectors by name, built-ins and plugins, sorted by name."""
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))


class DetectorSpecError(ValueError):
    """A detector spec is wrong; ``path`` is the key below the spec (e.g. ("sensitivity",))."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[type, tuple[tuple[str, ...], str]]:  # survives worker processes
        return (type(self), (self.path, str(self)))


def build_from(spec: str | Mapping[str, Any] | None, detectors: Mapping[str, type], default: str, kind: str = "detector") -> Any:
    """Build and check one of ``detectors`` from a name or ``{type: NAME, **params}``; None is ``default``.

    Errors are :class:`DetectorSpecError` carrying the path of the bad key below the spec.
    """
    if spec is None:
        spec = default
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("type", None)
        if name is None:
            raise DetectorSpecError(("type",), "missing: a detector mapping needs 'type: NAME'")
        if not isinstance(name, str):
            raise DetectorSpecError(("type",), f"must be a detector name, got {name!r}")
    else:
        raise DetectorSpecError((), f"must be a detector name or a mapping with 'type', got {spec!r}")
    cls = detectors.get(name)
    if cls is None:
        where = ("type",) if isinstance(spec, Mapping) else ()
        raise DetectorSpecError(where, f"unknown {kind} {name!r}; available: {', '.join(detectors)}")
    known = cls.param_names()
    for key in params:
        if key not in known:
            raise DetectorSpecError((str(key),), f"unknown parameter of detector {name!r}; known: {', '.join(known)}")
    detector = cls(**params)
    try:
        detector.check_params()
    except ParamError as exc:
        raise DetectorSpecError((exc.param,), exc.message) from None
    return detector


def build(spec: str | Mapping[str, Any] | None) -> Detector:
    """A checked univariate detector from its spec; None means the default."""
    return build_from(spec, available(), DEFAULT_DETECTOR)
