"""Spot interruption notices become a SIGTERM to ourselves, so a spot run saves its checkpoint.

EC2 warns a spot instance two minutes before it takes it back, at the instance metadata path
``/latest/meta-data/spot/instance-action`` (404 until then). The training loop already turns
SIGTERM into "save a checkpoint at once, status stopped, exit 143", so the watcher only has to
notice and send it. IMDSv2 only (a session token first), as the stack requires.

Example:
    AVE_WATCH_SPOT=1 python -m trainer train --data s3://b/data/ --out s3://b/runs/r1/

    # in the training loop:
    watcher = SpotWatcher.start_if_enabled()   # None unless AVE_WATCH_SPOT=1

The endpoint is AWS_EC2_METADATA_SERVICE_ENDPOINT (as boto reads it), else http://169.254.169.254.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import structlog

log = structlog.get_logger()

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL = 21600  # seconds; the most IMDS allows


class SpotWatcher(threading.Thread):
    """A daemon thread that polls IMDS every ``interval`` seconds and SIGTERMs this process on a
    spot interruption notice. It never raises: an unreachable IMDS is logged once (and once more
    when it answers again), then polled quietly.

    Args:
        endpoint: IMDS base URL (default: AWS_EC2_METADATA_SERVICE_ENDPOINT or 169.254.169.254).
        interval: seconds between polls.
        timeout: seconds for each HTTP request.
    """

    def __init__(self, endpoint: str | None = None, interval: float = 5.0, timeout: float = 2.0):
        super().__init__(name="spot-watcher", daemon=True)
        endpoint = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
        self.endpoint = endpoint.rstrip("/")
        self.interval, self.timeout = interval, timeout
        self.notice: dict | None = None  # the notice, once seen
        self._stopping = threading.Event()
        self._token: str | None = None
        self._token_expires = 0.0
        self._reachable: bool | None = None
        # IMDS is link-local: never through an HTTP(S)_PROXY from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def start_if_enabled(cls, **kwargs) -> "SpotWatcher | None":
        """Start a watcher if AVE_WATCH_SPOT=1 (and AWS_EC2_METADATA_DISABLED is not true)."""
        if os.environ.get("AVE_WATCH_SPOT") != "1":
            return None
        if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
            log.warning("spot.watch_disabled", reason="AWS_EC2_METADATA_DISABLED=true")
            return None
        watcher = cls(**kwargs)
        watcher.start()
        log.info("spot.watching", endpoint=watcher.endpoint, interval=watcher.interval)
        return watcher

    def stop(self) -> None:
        self._stopping.set()

    def _request(self, method: str, path: str, headers: dict) -> bytes:
        req = urllib.request.Request(self.endpoint + path, method=method, headers=headers)
        with self._http.open(req, timeout=self.timeout) as resp:
            return resp.read()

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            self._token = self._request("PUT", "/latest/api/token",
                                        {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
                                        ).decode().strip()
            self._token_expires = time.monotonic() + TOKEN_TTL - 60
        return self._token

    def check(self) -> dict | None:
        """One poll: the interruption notice (``{"action": ..., "time": ...}``) or None.

        Raises:
            OSError: IMDS did not answer (urllib's errors are OSErrors).
        """
        for _ in range(2):  # a second time with a new token if IMDS forgot ours (401)
            headers = {"X-aws-ec2-metadata-token": self._get_token()}
            try:
                body = self._request("GET", "/latest/meta-data/spot/instance-action", headers)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                if e.code == 401:
                    self._token = None
                    continue
                raise
            try:
                notice = json.loads(body)
            except ValueError:
                notice = None
            return notice if isinstance(notice, dict) else {"action": body.decode(errors="replace")}
        raise OSError("IMDS refused a fresh token (401)")

    def run(self) -> None:
        while not self._stopping.is_set():
            notice = None
            try:
                notice = self.check()
                if self._reachable is False:
                    log.info("spot.imds_reachable", endpoint=self.endpoint)
                self._reachable = True
            except Exception as e:  # never let the watcher take training down
                if self._reachable is not False:
                    log.warning("spot.imds_unreachable", endpoint=self.endpoint,
                                error=f"{type(e).__name__}: {e}", note="polling on quietly")
                self._reachable = False
            if notice is not None:
                self.notice = notice
                log.warning("spot.interruption_notice", action=notice.get("action"),
                            time=notice.get("time"), then="SIGTERM: checkpoint and stop")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self._stopping.wait(self.interval)
