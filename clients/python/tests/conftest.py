"""Fixtures: a real `umgdb serve` on a real socket, and synthetic-world photos.

The server binary comes from --umgdb (ctest passes $<TARGET_FILE:umgdb>), else
$UMGDB_BIN, else build/umgdb of this tree; the model is the committed
tests/fixtures/synth-umg. Photos are made by tools/synthworld/world.py
(numpy + PIL), deterministic per (seed, index).
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "tools", "synthworld"))

import umgdb  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "fixtures", "synth-umg")
SEED = 1000        # held out from the model's training (docs/synth.md)
N_PHOTOS = 10
TOKEN = "py-client-s3cret"


def pytest_addoption(parser):
    parser.addoption("--umgdb", default=None, help="the umgdb binary (default $UMGDB_BIN or build/umgdb)")


@pytest.fixture(scope="session")
def umgdb_bin(request):
    given = request.config.getoption("--umgdb") or os.environ.get("UMGDB_BIN")
    path = given or os.path.join(ROOT, "build", "umgdb")
    if not os.access(path, os.X_OK):
        if given:
            pytest.fail("umgdb binary %s is not there" % path)
        pytest.skip("no umgdb binary at %s (build it, or pass --umgdb)" % path)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`umgdb serve` as a child process on a TCP port and a Unix socket."""

    def __init__(self, binary, workdir, allow_root=None, extra=(), env=None):
        self.workdir = workdir
        self.sock = os.path.join(workdir, "sock")
        self.log_path = os.path.join(workdir, "server.log")
        for _ in range(5):   # a free port can be taken between the probe and the bind
            self.port = free_port()
            self.addr = "127.0.0.1:%d" % self.port
            cmd = [binary, "serve", "--data", os.path.join(workdir, "data"), "--model", MODEL,
                   "--listen", self.addr, "--socket", self.sock, "--threads", "1", "--log-level", "warn"]
            if allow_root:
                cmd += ["--allow-root", allow_root]
            cmd += list(extra)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=dict(os.environ, **(env or {})))
            if self._wait_ready(60):
                return
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                break
        raise RuntimeError("umgdb serve did not start:\n" + self.log())

    def _wait_ready(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM and the exit status (0 = a clean stop, docs/server.md "Shutdown")."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed"
        return self.proc.returncode


def make_photos(folder, start, count):
    """Synthetic-world photos (seed SEED) written to folder: {file name: (bytes, (w, h), caption)}."""
    import world
    os.makedirs(folder, exist_ok=True)
    made = {}
    for i in range(start, start + count):
        name, data, size, _objs, caption = world.make(SEED, i)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        made[name] = (data, size, caption)
    return made


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """The directory of the shared photos, and what is in it."""
    root = str(tmp_path_factory.mktemp("root"))
    folder = os.path.join(root, "photos")
    return root, folder, make_photos(folder, 0, N_PHOTOS)


@pytest.fixture(scope="session")
def server(umgdb_bin, photos, tmp_path_factory):
    """The open server (no auth) that most tests share; path ingest allowed under the photos' root."""
    root, _folder, _made = photos
    srv = Server(umgdb_bin, str(tmp_path_factory.mktemp("srv")), allow_root=root)
    yield srv
    assert srv.alive(), "the server died during the tests:\n" + srv.log()
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="session")
def collection(server, photos):
    """The shared photos ingested by bytes: {file name: IngestResult}."""
    _root, folder, made = photos
    with umgdb.Client(server.addr) as c:
        report = c.ingest_folder(folder)
    assert not report.failed and report.ingested == len(made)
    return {os.path.basename(f.path): f.result for f in report.files}


@pytest.fixture
def client(server):
    with umgdb.Client(server.addr) as c:
        yield c
