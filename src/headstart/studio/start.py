"""The studio's start page: recent projects and a new one, for ``headstart studio`` with no
folder (and at ``/start`` whichever way it was launched).

The list of recent projects is ``recent.json`` in the user's headstart folder
(``$XDG_CONFIG_HOME/headstart``, else ``~/.config/headstart``): each project the studio
opened, newest first, at most :data:`MAX_RECENT`. A new project is made inside the
projects folder (``--projects``, default ``~/headstart-projects``) under a name from the
browser reduced to a safe name, never a path; a project opened from the page must be one
of the recent list (the browser sends which, never a path of its own choosing) and is
checked again before it is opened: a folder holding a studio project (``studio.json`` and
``data``), nothing else. :class:`Launcher` sends ``/start`` and ``/api/start/...`` to the
start page and every other request to the open project's studio (the start page while
none is open).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse

from .. import defaults
from ..errors import DataError, PathError
from ..io.files import FileProblem, inside, load_json, read_regular, write_text_atomic
from ..io.walk import IMAGE_EXTENSIONS
from .app import _routes, allowed_hosts, guarded
from .project import Project, safe_name

__all__ = ["Launcher", "MAX_RECENT", "default_projects_dir", "recent", "remember"]

START_PAGE = Path(__file__).with_name("start.html")
MAX_RECENT = 20


def _config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "headstart"


def default_projects_dir() -> Path:
    """Where new projects are made unless ``--projects`` says otherwise."""
    return Path(os.path.expanduser("~")) / "headstart-projects"


def _is_project(path: Path) -> bool:
    """A folder (not a link) holding a studio project: ``studio.json`` and ``data``."""
    try:
        return (path.is_dir() and not path.is_symlink()
                and inside(path, "studio.json", "project", "file") is not None
                and inside(path, "data", "project", "folder") is not None)
    except PathError:
        return False


def _read_recent() -> list[dict[str, Any]]:
    try:
        r = load_json(read_regular(_config_dir() / "recent.json", 1 << 20))
    except (FileProblem, ValueError):
        return []
    items = r.get("projects") if isinstance(r, dict) else None
    return [p for p in items or [] if isinstance(p, dict) and isinstance(p.get("path"), str)
            and isinstance(p.get("opened"), (int, float))]


def remember(project: str | os.PathLike) -> None:
    """Put ``project`` first in the recent list (written atomically; a list that cannot be
    written is not an error: the studio works without it)."""
    path = str(Path(project).resolve())
    items = [p for p in _read_recent() if p["path"] != path]
    items.insert(0, {"path": path, "opened": time.time()})
    try:
        _config_dir().mkdir(parents=True, exist_ok=True)
        write_text_atomic(_config_dir() / "recent.json",
                          json.dumps({"projects": items[:MAX_RECENT]}, indent=1) + "\n")
    except OSError:
        pass


def recent() -> list[dict[str, Any]]:
    """The recent projects that are still studio projects, newest first: ``path``,
    ``name``, ``opened`` (epoch seconds), ``classes``, ``images``, ``runs``."""
    out = []
    for item in _read_recent():
        path = Path(item["path"])
        if not path.is_absolute() or not _is_project(path):
            continue
        classes = [d for d in (path / "data").iterdir()
                   if d.is_dir() and not d.name.startswith((".", "_"))]
        models = path / "models"
        out.append({"path": str(path), "name": path.name, "opened": item["opened"],
                    "classes": len(classes),
                    "images": sum(1 for d in classes for f in d.iterdir()
                                  if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                    "runs": sum(1 for d in models.iterdir() if d.is_dir())
                    if models.is_dir() else 0})
    return out


class Launcher:
    """The studio's ASGI application: the start page and the open project's studio (see
    the module docstring). ``project``: the project to open first, or None."""

    def __init__(self, token: str, host: str = "127.0.0.1", port: int = defaults.STUDIO_PORT,
                 allow_hosts: tuple[str, ...] = (), body_timeout: float = defaults.BODY_TIMEOUT_S,
                 projects: str | os.PathLike | None = None,
                 project: str | os.PathLike | None = None) -> None:
        self.token, self.host, self.port = token, host, port
        self.allow_hosts, self.body_timeout = tuple(allow_hosts), body_timeout
        self.projects = Path(projects) if projects is not None else default_projects_dir()
        self.inner: Any = None
        self.project: Path | None = None
        self.start = self._start_app()
        if project is not None:
            self.open(Path(project))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") in ("http", "websocket") else ""
        starting = path == "/start" or path.startswith("/api/start/")
        app = self.start if starting or self.inner is None else self.inner
        await app(scope, receive, send)

    def open(self, path: Path) -> dict[str, Any]:
        """Make ``path`` the open project (remembered in the recent list).

        Raises:
            DataError: a training run is in progress in the open project.
        """
        trainer = getattr(getattr(self.inner, "state", None), "trainer", None)
        if trainer is not None and trainer.state == "running" and path != self.project:
            raise DataError(f"a training run is in progress in {self.project}: wait for it "
                            "or cancel it before opening another project")
        project = Project(path)
        self.inner = _routes(project, self.token, self.host, self.port, self.allow_hosts,
                             self.body_timeout)
        self.project = project.root
        remember(project.root)
        return {"opened": str(project.root), "go": "/"}

    def _start_app(self) -> FastAPI:
        app = FastAPI(title="headstart studio", docs_url=None, redoc_url=None,
                      openapi_url=None)
        guarded(app, self.token, allowed_hosts(self.host, self.allow_hosts), self.port,
                self.body_timeout)

        @app.get("/", response_class=HTMLResponse)
        async def home() -> Any:
            return RedirectResponse("/start") if self.inner is not None else \
                START_PAGE.read_text()

        @app.get("/start", response_class=HTMLResponse)
        async def start() -> str:
            return START_PAGE.read_text()

        @app.get("/api/start/projects")
        async def projects() -> dict[str, Any]:
            return {"recent": recent(), "projects_dir": str(self.projects),
                    "open": str(self.project) if self.project else None}

        @app.post("/api/start/new")
        async def new(body: dict[str, str]) -> dict[str, Any]:
            return self.open(self._new_folder(body.get("name", "")))

        @app.post("/api/start/open")
        async def open_recent(body: dict[str, str]) -> dict[str, Any]:
            wanted = body.get("path", "")
            chosen = next((p for p in recent() if p["path"] == wanted), None)
            if chosen is None:
                raise DataError(f"project: {wanted!r} is not one of the recent projects")
            return self.open(Path(chosen["path"]))
        return app

    def _new_folder(self, name: str) -> Path:
        """``projects/<safe name>``, which must not exist yet (or be an empty folder).

        Raises:
            DataError: the name has no usable character, or a project or file has it.
        """
        name = safe_name(name, "project name")
        self.projects.mkdir(parents=True, exist_ok=True)
        try:
            path = inside(self.projects, name, "project", "absent")
        except PathError:
            path = self.projects / name
            if not (path.is_dir() and not path.is_symlink() and not any(path.iterdir())):
                raise DataError(f"project name: {name!r} is taken in {self.projects}: "
                                "choose another name or open it from the list") from None
        return path


def studio(project: str | os.PathLike | None = None, host: str = "127.0.0.1",
           port: int = defaults.STUDIO_PORT, on_ready: Any = None,
           import_from: str | os.PathLike | None = None, allow_hosts: tuple[str, ...] = (),
           body_timeout: float = defaults.BODY_TIMEOUT_S,
           projects: str | os.PathLike | None = None) -> None:
    """Serve the studio until interrupted: ``project`` open, or the start page (recent
    projects, a new one in ``projects``) when it is None. ``on_ready(url)`` gets the
    address with the token, just before the server starts listening. ``import_from``: a
    folder of class folders copied into the project's ``data`` first; ``allow_hosts``,
    ``body_timeout``: see :func:`headstart.studio.app.create_studio_app`.

    Raises:
        HeadstartError: the port is out of range or busy, or ``import_from`` without a
            project.
    """
    import secrets

    import uvicorn

    from ..deploy.serve import check_port
    from .app import WILDCARDS, host_name

    check_port(host, port)
    if import_from is not None:
        if project is None:
            raise DataError("--import needs a project folder to copy the classes into")
        Project(project).import_classes(import_from)
    token = secrets.token_urlsafe(24)
    app = Launcher(token, host, port, allow_hosts, body_timeout, projects, project)
    if on_ready is not None:
        shown = "127.0.0.1" if host_name(host) in WILDCARDS else host
        on_ready(f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/?token={token}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
