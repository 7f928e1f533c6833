"""The local stack: a real single-node Apache Kafka (KRaft) and a real redis-server on free loopback ports.

Kafka's jars come from Maven Central through ``deploy/local/pom.xml`` (``mvn dependency:copy-dependencies``)
into a cache (``$XDG_CACHE_HOME/platestream``, default ``~/.cache/platestream``) and run on the machine's
JDK; Debian's ``redis-server`` is installed with apt when missing. State (data, logs, ``stack.json`` with
ports and pids) lives in the settings' state dir, so a second ``up`` reuses everything and takes seconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "local"
KAFKA_VERSION = "4.1.1"


class StackError(RuntimeError):
    """The local stack could not be set up or started; the message says what to do."""


@dataclass
class StackInfo:
    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    kafka_port: int
    controller_port: int
    redis_port: int
    state_dir: str


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "platestream" / f"kafka-{KAFKA_VERSION}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def ensure_kafka_jars(log: bool = True) -> Path:
    """Fetch Kafka and its run-time dependencies from Maven Central once; later calls are instant."""
    jars = cache_dir() / "jars"
    marker = jars / ".complete"
    if marker.exists():
        return jars
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is needed to fetch Kafka from Maven Central; install it first")
    if shutil.which("java") is None:
        raise StackError("a JDK (java 17+) is needed to run Kafka")
    if log:
        print(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {jars} ...", file=sys.stderr)
    jars.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "-f", str(DEPLOY / "pom.xml"), f"-Dkafka.version={KAFKA_VERSION}",
           "dependency:copy-dependencies", f"-DoutputDirectory={jars}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"mvn failed to fetch Kafka:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if not list(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"mvn finished but no kafka_2.13 jar is in {jars}")
    marker.touch()
    return jars


def ensure_redis_server() -> str:
    """Path of redis-server, installing Debian's package with apt when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    print("redis-server not found; installing the Debian package redis-server ...", file=sys.stderr)
    apt = ["apt-get", "install", "-y", "-q", "redis-server"]
    prefix: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(prefix + apt, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, env=env)
        proc = subprocess.run(prefix + apt, capture_output=True, text=True, env=env)
    # the package starts a system-wide instance on 6379; platestream runs its own, so stop that one
    subprocess.run([*prefix, "service", "redis-server", "stop"], capture_output=True)
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)
    if not found:
        raise StackError(f"could not install redis-server (apt said: {proc.stderr[-1000:]})")
    return found


def read_info(state_dir: Path) -> StackInfo | None:
    try:
        return StackInfo(**json.loads((state_dir / "stack.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def status(state_dir: Path) -> tuple[StackInfo | None, bool, bool]:
    info = read_info(state_dir)
    if info is None:
        return None, False, False
    return info, _alive(info.kafka_pid), _alive(info.redis_pid)


def _wait_kafka(bootstrap: str, proc_pid: int, log_path: Path, client: dict[str, Any],
                timeout: float = 90.0) -> None:
    from kafka.admin import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not _alive(proc_pid):
            raise StackError(f"Kafka exited during start; see {log_path}:\n{_tail(log_path)}")
        host, port = bootstrap.rsplit(":", 1)
        try:  # wait for the listener before a client starts its own (noisy) retries
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError as e:
            last = e
            time.sleep(0.2)
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                     client_id="platestream-stack", **client)
            admin.list_topics()
            admin.close()
            return
        except Exception as e:
            last = e
            time.sleep(0.3)
    raise StackError(f"Kafka did not answer on {bootstrap} within {timeout}s ({last}); see {log_path}")


def _wait_redis(port: int, pid: int, log_path: Path, client: dict[str, Any], timeout: float = 20.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"redis-server exited during start; see {log_path}:\n{_tail(log_path)}")
        try:
            redis.Redis(port=port, socket_timeout=1, **client).ping()
            return
        except Exception:
            time.sleep(0.1)
    raise StackError(f"redis-server did not answer on port {port}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def _with_props(text: str, overrides: dict[str, str]) -> str:
    """A properties file with ``overrides`` replacing (or adding) keys."""
    lines = [line for line in text.splitlines() if line.split("=", 1)[0] not in overrides]
    return "\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n"


def start_kafka(state_dir: Path, port: int, controller_port: int, partitions: int = 4,
                overrides: dict[str, str] | None = None, client: dict[str, Any] | None = None) -> int:
    jars = ensure_kafka_jars()
    kdir = state_dir / "kafka"
    data = kdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    props = (DEPLOY / "server.properties.in").read_text()
    for k, v in {"@KAFKA_PORT@": port, "@CONTROLLER_PORT@": controller_port, "@DATA_DIR@": data,
                 "@PARTITIONS@": partitions}.items():
        props = props.replace(k, str(v))
    (kdir / "server.properties").write_text(_with_props(props, overrides or {}))
    java = [shutil.which("java") or "java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={DEPLOY / 'log4j2.properties'}", "-cp", f"{jars}/*"]
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # "--cluster-id=": an id may start with "-", which argparse would take for an option
        proc = subprocess.run([*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                               "-c", str(kdir / "server.properties")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"kafka storage format failed: {proc.stdout}{proc.stderr}")
    log_path = state_dir / "kafka.log"
    with open(log_path, "ab") as out:
        p = subprocess.Popen([*java, "kafka.Kafka", str(kdir / "server.properties")], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _wait_kafka(f"127.0.0.1:{port}", p.pid, log_path, client or {})
    return p.pid


# Trail members are 49 bytes + the read id (85 with a UUID): above Redis's default 64-byte listpack limit
# a trail would be a skiplist.
# With these, trails and most area-index cells stay listpack-encoded: 400 -> 156 bytes per stored sighting
# (trail + area index + checkpoint, 218,672 sightings; measured in the session note of 2026-11-25).
REDIS_TUNING = ["--zset-max-listpack-value", "128", "--zset-max-listpack-entries", "512"]


def start_redis(state_dir: Path, port: int, extra: list[str] | None = None,
                client: dict[str, Any] | None = None) -> int:
    server = ensure_redis_server()
    rdir = state_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "redis.log"
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir), "--daemonize", "no",
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes",
            *REDIS_TUNING,
            "--logfile", str(log_path), *(extra or [])]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    _wait_redis(port, p.pid, log_path, client or {})
    return p.pid


def up(state_dir: Path, partitions: int = 4) -> StackInfo:
    """Start (or reuse) the local stack and write ``stack.json``; idempotent."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    old = read_info(state_dir)
    kafka_alive = old is not None and _alive(old.kafka_pid)
    redis_alive = old is not None and _alive(old.redis_pid)
    if old is not None and kafka_alive and redis_alive:
        return old

    def port(previous: int | None) -> int:
        return previous if previous and _port_free(previous) else free_port()

    started: list[int] = []
    try:
        if old is not None and kafka_alive:
            kport, cport, kpid = old.kafka_port, old.controller_port, old.kafka_pid
        else:
            kport, cport = port(old.kafka_port if old else None), port(old.controller_port if old else None)
            kpid = start_kafka(state_dir, kport, cport, partitions)
            started.append(kpid)
        if old is not None and redis_alive:
            rport, rpid = old.redis_port, old.redis_pid
        else:
            rport = port(old.redis_port if old else None)
            rpid = start_redis(state_dir, rport)
    except BaseException:
        for pid in started:  # leave nothing half-started behind
            stop_pid(pid)
        raise
    info = StackInfo(f"127.0.0.1:{kport}", f"redis://127.0.0.1:{rport}/0", kpid, rpid, kport, cport, rport,
                     str(state_dir))
    (state_dir / "stack.json").write_text(json.dumps(asdict(info), indent=2))
    return info


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def down(state_dir: Path, wipe: bool = False) -> None:
    """Stop both servers; ``wipe`` also deletes their data."""
    info = read_info(state_dir)
    if info is not None:
        stop_pid(info.redis_pid)
        stop_pid(info.kafka_pid)
        (state_dir / "stack.json").unlink(missing_ok=True)
    if wipe:
        for sub in ("kafka", "redis"):
            shutil.rmtree(state_dir / sub, ignore_errors=True)


# -- a secured stack: SASL_SSL Kafka and TLS + ACL Redis ------------------------------------------------


def make_tls(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost (PEM files), for the secure stack."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("platestream local CA", ca_key, "platestream local CA", ca_key, True)
    server = cert("127.0.0.1", key, "platestream local CA", ca_key, False)
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pem_cert = server.public_bytes(serialization.Encoding.PEM)
    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem",
             "bundle": directory / "server-bundle.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(pem_cert)
    files["key"].write_bytes(pem_key)
    files["bundle"].write_bytes(pem_key + pem_cert)
    for f in (files["key"], files["bundle"]):
        f.chmod(0o600)
    return files


@dataclass
class SecureStack:
    """A running secured stack and the ``PLATESTREAM_*`` variables a client needs to reach it."""

    env: dict[str, str]
    kafka_pid: int
    redis_pid: int
    # kafka-python client options of the brokers' super user, who may change ACLs (the ``env`` user may not)
    kafka_admin: dict[str, Any]


def up_secure(state_dir: Path, partitions: int = 4) -> SecureStack:
    """Kafka with one SASL_SSL (PLAIN) listener and Redis with TLS only and an ACL user; fresh secrets.

    Shows (and tests) the production-shaped settings: no plaintext port is open on either server.
    """
    import secrets

    state_dir = state_dir.resolve()
    tls = make_tls(state_dir / "tls")
    kafka_pw, redis_pw, admin_pw = (secrets.token_urlsafe(18) for _ in range(3))
    kport, cport, rport = free_port(), free_port(), free_port()
    jaas = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{admin_pw}" user_admin="{admin_pw}" user_platestream="{kafka_pw}";')
    overrides = {
        "listeners": f"SASL_SSL://127.0.0.1:{kport},CONTROLLER://127.0.0.1:{cport}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{kport}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN", "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM", "ssl.keystore.location": str(tls["bundle"]),
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls["ca"]),
        # ACLs are enforced where there are any (a deployment's would name every right); resources no ACL names
        # stay open, so a test can take one right away from the client user with a DENY
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:admin", "allow.everyone.if.no.acl.found": "true",
    }
    import ssl

    ctx = ssl.create_default_context(cafile=str(tls["ca"]))
    kafka_client = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "platestream",
                    "sasl_plain_password": kafka_pw, "ssl_context": ctx}
    kpid = start_kafka(state_dir, kport, cport, partitions, overrides, kafka_client)
    try:
        acl = ["--port", "0", "--tls-port", str(rport), "--tls-cert-file", str(tls["cert"]),
               "--tls-key-file", str(tls["key"]), "--tls-ca-cert-file", str(tls["ca"]), "--tls-auth-clients", "no",
               "--user", "default", "off", "--user", "platestream", "on", f">{redis_pw}", "~ps:*", "&*", "+@all",
               "-@dangerous"]
        rpid = start_redis(state_dir, rport, acl, {"ssl": True, "ssl_ca_certs": str(tls["ca"]),
                                                   "username": "platestream", "password": redis_pw})
    except BaseException:
        stop_pid(kpid)
        raise
    env = {"PLATESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{kport}",
           "PLATESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PLATESTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
           "PLATESTREAM_KAFKA_SASL_USERNAME": "platestream", "PLATESTREAM_KAFKA_SASL_PASSWORD": kafka_pw,
           "PLATESTREAM_KAFKA_SSL_CAFILE": str(tls["ca"]),
           "PLATESTREAM_REDIS_URL": f"rediss://platestream:{redis_pw}@127.0.0.1:{rport}/0",
           "PLATESTREAM_REDIS_CA_FILE": str(tls["ca"])}
    admin = {**kafka_client, "sasl_plain_username": "admin", "sasl_plain_password": admin_pw}
    return SecureStack(env, kpid, rpid, admin)


# -- a local Redis Cluster ---------------------------------------------------------------------------


@dataclass
class ClusterInfo:
    url: str
    ports: list[int]
    pids: list[int]


def start_cluster(state_dir: Path, primaries: int = 3) -> ClusterInfo:
    """A Redis Cluster of ``primaries`` redis-server processes (no replicas) on free loopback ports.

    Slots are split evenly (``CLUSTER ADDSLOTSRANGE``) and the nodes introduced with ``CLUSTER MEET``;
    returns once every node reports ``cluster_state:ok``.
    """
    import redis

    ports = [free_port() for _ in range(primaries)]
    bus = [free_port() for _ in range(primaries)]  # the default (port + 10000) may not exist
    pids: list[int] = []
    try:
        for port, bus_port in zip(ports, bus, strict=True):
            node_dir = state_dir / f"cluster-{port}"
            pids.append(start_redis(node_dir, port, [
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "5000", "--cluster-port", str(bus_port)]))
        clients = [redis.Redis(port=p, socket_timeout=5) for p in ports]
        step = 16384 // primaries
        for i, c in enumerate(clients):
            lo, hi = i * step, (16383 if i == primaries - 1 else (i + 1) * step - 1)
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for p, b in zip(ports[1:], bus[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p, b)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            text = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{primaries}" in t for t in text):
                return ClusterInfo(f"redis://127.0.0.1:{ports[0]}/0", ports, pids)
            time.sleep(0.2)
        raise StackError(f"Redis Cluster on ports {ports} did not reach cluster_state:ok")
    except BaseException:
        for pid in pids:
            stop_pid(pid)
        raise
