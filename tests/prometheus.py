"""A real Prometheus server for tests: started on a free loopback port, always stopped.

Usage::

    from prometheus import PrometheusServer

    with PrometheusServer(["127.0.0.1:9478"], tmp_path) as prom:
        prom.wait_for_targets_up()
        result = prom.wait_for('scaleprobe_up{device="cpu"}')   # the query API's "result" list
        value = float(result[0]["value"][1])

It runs ``/usr/bin/prometheus`` (Debian's ``prometheus`` package; the test is skipped locally and
fails under CI when it is missing, see ``conftest.require_binary``) with a config written into a
temporary directory: every target scraped every second by one job (``job="scaleprobe"`` unless
told), optionally over HTTPS (``scheme="https"``, ``tls_config={"ca_file": ...}``) with basic
auth (``basic_auth={"username": ..., "password": ...}``), and optionally with rule files
(``rule_files=[...]``, evaluated every second) for tests of recording and alerting rules.

``start()`` returns once ``/-/ready`` answers; if Prometheus exits or does not get ready in time,
it raises with the tail of Prometheus' own log. ``stop()`` (also on ``__exit__`` and on failure)
terminates it, then kills it if it lingers. Its log is kept in ``workdir/prometheus.log``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from conftest import require_binary

Result = list[dict[str, Any]]


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (start() retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(
        self,
        targets: Sequence[str],
        workdir: Path,
        *,
        job: str = "scaleprobe",
        scheme: str = "http",
        tls_config: dict[str, Any] | None = None,
        basic_auth: dict[str, str] | None = None,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        self.binary = require_binary("prometheus")
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.job = job
        self.scheme = scheme
        self.tls_config = tls_config
        self.basic_auth = basic_auth
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.startup_timeout_seconds = startup_timeout_seconds
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        scrape: dict[str, Any] = {
            "job_name": self.job,
            "scheme": self.scheme,
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "static_configs": [{"targets": self.targets}],
        }
        if self.tls_config is not None:
            scrape["tls_config"] = {k: str(v) for k, v in self.tls_config.items()}
        if self.basic_auth is not None:
            scrape["basic_auth"] = dict(self.basic_auth)
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [scrape],
        }

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            data_dir = self.workdir / f"data-{self.port}"
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={data_dir}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--web.enable-lifecycle",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except PrometheusError as error:
                last_error = str(error)
                self.stop()
                if "address already in use" not in last_error:
                    break
        raise PrometheusError(last_error)

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {self.startup_timeout_seconds} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- HTTP API --------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> and return its ``data``; raises PrometheusError on an API error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
            raise PrometheusError(f"{path} {params}: {body.get('error', error)}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Result:
        """Instant query: the ``result`` list (vector samples: ``metric`` and ``value``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        data = self.api("query", **params)
        result: Result = data["result"] if data["resultType"] in ("vector", "matrix") else [data]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> Result:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=step)
        result: Result = data["result"]
        return result

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[Result], bool] = bool,
        timeout_seconds: float = 60.0,
    ) -> Result:
        """Poll ``expr`` until ``predicate(result)`` (default: non-empty) or fail with the last."""
        deadline = time.monotonic() + timeout_seconds
        result: Result = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"{expr!r} still {result!r} after {timeout_seconds} s; targets: "
                    f"{self.target_health()}"
                )
            time.sleep(0.5)

    def targets_status(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def target_health(self) -> list[tuple[str, str, str]]:
        return [
            (t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in self.targets_status()
        ]

    def wait_for_targets_up(self, timeout_seconds: float = 60.0) -> None:
        """Until every target's last scrape succeeded (``up == 1`` for the job)."""
        expected = len(self.targets)
        self.wait_for(
            f'up{{job="{self.job}"}} == 1',
            lambda result: len(result) == expected,
            timeout_seconds,
        )

    def rules(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts


# dcgm-exporter's camelCase labels on scaleprobe_device_info (UUID, modelName) are a deliberate
# contract, so that series join with that exporter's; promtool's style lint flags exactly that.
DCGM_LABEL_LINT = (
    "scaleprobe_device_info label names should be written in 'snake_case' not 'camelCase'"
)


def promtool_check_metrics(exposition: str) -> list[str]:
    """Problems ``promtool check metrics`` finds in a text exposition, minus the dcgm exception.

    Raises AssertionError on a parse error (exit code 1); lint problems (exit code 3) are
    returned, so a clean exposition gives ``[]``.
    """
    result = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode in (0, 3), "\n".join(output)
    return [line for line in output if line.strip() and line != DCGM_LABEL_LINT]
