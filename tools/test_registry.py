#!/usr/bin/env python3
"""fieldcrypt's own test Schema Registry. Its one job: serve, from memory, the part
of Confluent Schema Registry's REST API that fieldcrypt and the Confluent clients
use, so tests run without a real registry (none can be installed here).

Implements this subset of the Confluent Schema Registry API (AVRO only):

    GET    /subjects                                  list of subjects
    GET    /subjects/{subject}/versions               list of versions
    GET    /subjects/{subject}/versions/{v|latest}    {"subject","version","id","schema"}
    GET    /subjects/{subject}/versions/{v}/schema    raw schema
    POST   /subjects/{subject}/versions               register -> {"id": N}
    POST   /subjects/{subject}                        lookup -> {"subject","version","id","schema"}
    DELETE /subjects/{subject}                        list of deleted versions
    GET    /schemas/ids/{id}                          {"schema": "..."}
    GET    /schemas/ids/{id}/versions                 [{"subject","version"}]
    GET    /schemas/ids/{id}/subjects                 [subject, ...]
    GET    /schemas/types                             ["AVRO"]
    GET    /associations/resources/{ns}/{name}        [] (no associations: newer
                                                      clients then use TopicNameStrategy)
    GET    /config[/{subject}]                        {"compatibilityLevel": ...}
    PUT    /config[/{subject}]                        echoes {"compatibility": ...}

Schema ids are global and start at 1; the same schema text (canonicalised JSON)
gets the same id under every subject. Versions start at 1 per subject, and
registering a schema already under the subject returns its id without a new
version. Query parameters (?normalize=, ?subject=, ?deleted=, ...) are accepted
and ignored. Errors use Confluent's codes: 40401 subject not found, 40402
version not found, 40403 schema not found, 42201 invalid schema, 401 bad auth.

Usage:
    python3 tools/test_registry.py --host 127.0.0.1 --port 0 \
        [--port-file PATH] [--basic-auth user:pass] [--exit-with-parent]
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _exit_on_signal(signum, frame):
    # Raised in the main thread, out of serve_forever(); the finally closes the socket.
    raise SystemExit(0)


# Installed before the slower optional import, so an early SIGTERM still exits 0.
signal.signal(signal.SIGTERM, _exit_on_signal)
signal.signal(signal.SIGINT, _exit_on_signal)

try:  # optional: validate Avro when fastavro is importable
    import fastavro  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    fastavro = None


class ApiError(Exception):
    """An error answered to the client as {"error_code", "message"}."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def canonical(schema_text):
    """Canonical form of a schema text: parsed and re-dumped with sorted keys."""
    try:
        obj = json.loads(schema_text)
    except (TypeError, ValueError) as e:
        raise ApiError(422, 42201, "Invalid schema: schema is not valid JSON: %s" % e)
    return obj, json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Registry:
    """In-memory schemas and subjects, guarded by one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = {}  # id -> schema text as first registered
        self.ids_by_canon = {}  # canonical text -> id
        self.subjects = {}  # subject -> list of ids; version = index + 1
        self.config = {"compatibilityLevel": "NONE"}
        self.subject_config = {}

    def _versions(self, subject):
        versions = self.subjects.get(subject)
        if versions is None:
            raise ApiError(404, 40401, "Subject '%s' not found." % subject)
        return versions

    def _version_index(self, subject, version):
        versions = self._versions(subject)
        if version == "latest" or version == "-1":
            if not versions:
                raise ApiError(404, 40402, "Version latest not found.")
            return len(versions) - 1
        try:
            v = int(version)
        except ValueError:
            raise ApiError(422, 42202, "The specified version '%s' is not a valid version id." % version)
        if v < 1 or v > len(versions):
            raise ApiError(404, 40402, "Version %s not found." % version)
        return v - 1

    def _entry(self, subject, index):
        schema_id = self.subjects[subject][index]
        return {
            "subject": subject,
            "version": index + 1,
            "id": schema_id,
            "schema": self.schemas[schema_id],
        }

    def subject_list(self):
        with self.lock:
            return sorted(self.subjects)

    def version_list(self, subject):
        with self.lock:
            return list(range(1, len(self._versions(subject)) + 1))

    def get_version(self, subject, version):
        with self.lock:
            return self._entry(subject, self._version_index(subject, version))

    def register(self, subject, schema_text):
        _, canon = canonical(schema_text)
        with self.lock:
            schema_id = self.ids_by_canon.get(canon)
            if schema_id is None:
                schema_id = len(self.schemas) + 1
                self.schemas[schema_id] = schema_text
                self.ids_by_canon[canon] = schema_id
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def lookup(self, subject, schema_text):
        _, canon = canonical(schema_text)
        with self.lock:
            versions = self._versions(subject)
            schema_id = self.ids_by_canon.get(canon)
            if schema_id is None or schema_id not in versions:
                raise ApiError(404, 40403, "Schema not found")
            return self._entry(subject, versions.index(schema_id))

    def schema_by_id(self, schema_id):
        with self.lock:
            if schema_id not in self.schemas:
                raise ApiError(404, 40403, "Schema %s not found" % schema_id)
            return self.schemas[schema_id]

    def versions_of_id(self, schema_id):
        with self.lock:
            if schema_id not in self.schemas:
                raise ApiError(404, 40403, "Schema %s not found" % schema_id)
            return [
                {"subject": s, "version": ids.index(schema_id) + 1}
                for s, ids in sorted(self.subjects.items())
                if schema_id in ids
            ]

    def delete_subject(self, subject):
        with self.lock:
            versions = self._versions(subject)
            del self.subjects[subject]
            self.subject_config.pop(subject, None)
            return list(range(1, len(versions) + 1))


def validate_register_body(body):
    """Return the schema text of a register/lookup body, or raise 42201."""
    if not isinstance(body, dict):
        raise ApiError(422, 42201, "Invalid schema: request body must be a JSON object")
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type != "AVRO":
        raise ApiError(422, 42201, "Invalid schema: schemaType %s is not supported (AVRO only)" % schema_type)
    if body.get("references"):
        raise ApiError(422, 42201, "Invalid schema: schema references are not supported")
    schema_text = body.get("schema")
    if not isinstance(schema_text, str):
        raise ApiError(422, 42201, "Invalid schema: field 'schema' must be a string")
    obj, _ = canonical(schema_text)
    if fastavro is not None:
        try:
            fastavro.parse_schema(obj)
        except Exception as e:
            raise ApiError(422, 42201, "Invalid schema: %s: %s" % (type(e).__name__, e))
    return schema_text


def parse_id(text):
    try:
        return int(text)
    except ValueError:
        raise ApiError(404, 40403, "Schema %s not found" % text)


class Handler(BaseHTTPRequestHandler):
    server_version = "fieldcrypt-test-registry/1"
    protocol_version = "HTTP/1.1"

    # -- plumbing ---------------------------------------------------------

    def log_message(self, fmt, *args):  # silence the default access log
        pass

    def _send(self, status, payload):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="test-registry"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        sys.stderr.write("%s %s %d\n" % (self.command, getattr(self, "path", None), status))
        sys.stderr.flush()

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, ...) as JSON too."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("Error",))[0]
        try:
            self._send(code, {"error_code": code, "message": reason})
        except OSError:
            pass

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # cannot tell where the body ends
            raise ApiError(400, 400, "Bad Content-Length header")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(422, 42201, "Invalid request: body is not valid JSON: %s" % e)

    def _authorized(self):
        expected = self.server.basic_auth
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except Exception:
            return False
        return given == expected

    def _handle(self):
        try:
            # Drain the body first so keep-alive connections stay in sync.
            try:
                body = self._read_body()
                body_error = None
            except ApiError as e:
                body, body_error = None, e
            if not self._authorized():
                self._send(401, {"error_code": 401, "message": "Unauthorized"})
                return
            if body_error is not None:
                raise body_error
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            parts = [unquote(p) for p in path.strip("/").split("/") if p != ""]
            status, payload = self.route(self.command, parts, body)
            self._send(status, payload)
        except ApiError as e:
            self._send(e.status, {"error_code": e.code, "message": e.message})
        except Exception as e:  # never crash on bad input
            self._send(500, {"error_code": 50001, "message": "Internal error: %r" % e})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    # -- routes -----------------------------------------------------------

    def route(self, method, parts, body):
        reg = self.server.registry
        n = len(parts)
        if n >= 1 and parts[0] == "subjects":
            if n == 1 and method == "GET":
                return 200, reg.subject_list()
            if n == 2:
                subject = parts[1]
                if method == "POST":
                    return 200, reg.lookup(subject, validate_register_body(body))
                if method == "DELETE":
                    return 200, reg.delete_subject(subject)
                raise ApiError(405, 405, "Method not allowed")
            if n >= 3 and parts[2] == "versions":
                subject = parts[1]
                if n == 3:
                    if method == "GET":
                        return 200, reg.version_list(subject)
                    if method == "POST":
                        return 200, {"id": reg.register(subject, validate_register_body(body))}
                    raise ApiError(405, 405, "Method not allowed")
                if n == 4 and method == "GET":
                    return 200, reg.get_version(subject, parts[3])
                if n == 5 and parts[4] == "schema" and method == "GET":
                    return 200, json.loads(reg.get_version(subject, parts[3])["schema"])
        elif n >= 1 and parts[0] == "schemas":
            if n == 2 and parts[1] == "types" and method == "GET":
                return 200, ["AVRO"]
            if n >= 3 and parts[1] == "ids" and method == "GET":
                schema_id = parse_id(parts[2])
                if n == 3:
                    return 200, {"schema": reg.schema_by_id(schema_id)}
                if n == 4 and parts[3] == "versions":
                    return 200, reg.versions_of_id(schema_id)
                if n == 4 and parts[3] == "subjects":
                    return 200, [v["subject"] for v in reg.versions_of_id(schema_id)]
                if n == 4 and parts[3] == "schema":
                    return 200, json.loads(reg.schema_by_id(schema_id))
        elif n >= 1 and parts[0] == "config" and n <= 2:
            if method == "GET":
                if n == 2:
                    with reg.lock:
                        level = reg.subject_config.get(parts[1], reg.config["compatibilityLevel"])
                    return 200, {"compatibilityLevel": level}
                return 200, dict(reg.config)
            if method == "PUT":
                if not isinstance(body, dict) or not isinstance(body.get("compatibility"), str):
                    raise ApiError(422, 42203, "Invalid compatibility level")
                level = body["compatibility"].upper()
                with reg.lock:
                    if n == 2:
                        reg.subject_config[parts[1]] = level
                    else:
                        reg.config["compatibilityLevel"] = level
                return 200, {"compatibility": level}
            raise ApiError(405, 405, "Method not allowed")
        elif n == 4 and parts[0] == "associations" and parts[1] == "resources" and method == "GET":
            return 200, []
        elif n == 0 and method == "GET":
            return 200, {}
        raise ApiError(404, 404, "HTTP 404 Not Found")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    ap = argparse.ArgumentParser(description="In-memory Confluent-compatible Schema Registry for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the bound port here (atomically)")
    ap.add_argument("--basic-auth", metavar="USER:PASS", help="require this HTTP Basic credential")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the parent process goes away (e.g. a pyenv shim killed by a test)")
    args = ap.parse_args(argv)
    if args.basic_auth is not None and ":" not in args.basic_auth:
        ap.error("--basic-auth must be user:pass")

    server = Server((args.host, args.port), Handler)
    server.registry = Registry()
    server.basic_auth = args.basic_auth
    port = server.server_address[1]

    if args.port_file:
        tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)

    if args.exit_with_parent:
        parent = os.getppid()

        def watch_parent():
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch_parent, daemon=True).start()

    print("listening on http://%s:%d" % (args.host, port), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
