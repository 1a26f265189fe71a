"""A local stand-in for the Kubernetes API server's batch/v1 Jobs API (no
cluster can run here): the real ``kubernetes`` client talks to it over HTTP;
it records each request and answers as the API server does."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fakes.http import send_json


class KubernetesApiRecorder:
    """A local stand-in for the Kubernetes API server: records each request and
    answers as the batch/v1 Jobs API does."""

    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[dict] = []
        self.jobs: dict[str, dict] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict):
                send_json(self, status, body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                recorder.requests.append({"method": self.command, "path": self.path,
                                          "body": json.loads(json.dumps(body)),
                                          "authorization": self.headers.get("Authorization")})
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?", path)
                if not m:
                    return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "reason": "NotFound", "code": 404})
                _ns, name, _status = m.groups()
                if self.command == "POST":
                    body["metadata"]["uid"] = "uid-1"
                    body["status"] = {}
                    recorder.jobs[body["metadata"]["name"]] = body
                    return self._reply(201, body)
                if name not in recorder.jobs:
                    return self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "reason": "NotFound", "code": 404})
                if self.command == "GET":
                    job = recorder.jobs[name]
                    job["status"] = {"active": 1, "startTime": "2026-01-01T00:00:00Z"}
                    return self._reply(200, job)
                if self.command == "DELETE":
                    recorder.jobs.pop(name)
                    return self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._reply(405, {"kind": "Status", "code": 405})

            do_GET = do_POST = do_DELETE = _handle

        self.host = host
        self.server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
