"""A real kube-apiserver for tests: its own etcd and kube-apiserver v1.20.2, both inside a network
namespace, on free ports, with a throwaway PKI and static tokens.

The binaries come from scripts/kube-tools.sh (/var/cache/flanneld-py/kube/bin).  Nothing listens
in the root namespace: the test process reaches the server only through commands run inside the
namespace (``kubectl()``, ``nsexec()``, or a Python helper under ``ip netns exec``).

* Namespace: ``Netns.create("kapi")`` makes ``kapi-<random>`` with loopback up; or pass the lab's
  underlay namespace and ``host="198.18.0.254"`` so lab nodes reach the server on the underlay.
* Serving certificate: signed by a CA of its own (tests/pki.py style, openssl), SANs 127.0.0.1,
  ``host``, 10.96.0.1 (the kubernetes Service) and kubernetes.default.svc names.
* Authentication: ``--token-auth-file`` with an admin token (group system:masters) and a token
  for ``system:serviceaccount:kube-flannel:flannel`` (groups system:serviceaccounts and
  system:serviceaccounts:kube-flannel, i.e. exactly what a real token of that ServiceAccount
  authenticates as, so the manifests' ClusterRoleBinding applies to it); client certificates
  signed by the CA (``--client-ca-file``); service-account tokens signed with the key pair the
  server was given (TokenRequest API: ``serviceaccount_token()``).
* Authorization ``Node,RBAC``; admission: NamespaceLifecycle, ServiceAccount, NodeRestriction,
  TaintNodesByCondition, Priority (the other default plugins off); API priority and fairness
  off (faster start).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from etcd_server import EtcdServer

REPO = Path(__file__).resolve().parents[1]
KUBE_CACHE = Path(os.environ.get("FLANNELD_KUBE_CACHE", "/var/cache/flanneld-py/kube"))
KUBE_APISERVER = KUBE_CACHE / "bin" / "kube-apiserver"
KUBECTL = KUBE_CACHE / "bin" / "kubectl"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kube-admin"
FLANNEL_SA_NAMESPACE = "kube-flannel"
FLANNEL_SA_NAME = "flannel"
FLANNEL_USER = f"system:serviceaccount:{FLANNEL_SA_NAMESPACE}:{FLANNEL_SA_NAME}"
FLANNEL_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{FLANNEL_SA_NAMESPACE}")
ADMISSION_ON = "NamespaceLifecycle,ServiceAccount,NodeRestriction,TaintNodesByCondition,Priority"
ADMISSION_OFF = (
    "LimitRanger,DefaultTolerationSeconds,DefaultStorageClass,StorageObjectInUseProtection,"
    "PersistentVolumeClaimResize,RuntimeClass,CertificateApproval,CertificateSigning,"
    "CertificateSubjectRestriction,DefaultIngressClass,MutatingAdmissionWebhook,"
    "ValidatingAdmissionWebhook,ResourceQuota"
)


def kube_tools_missing() -> str | None:
    """Why the kube tier cannot run here (None when it can)."""
    for exe in (KUBE_APISERVER, KUBECTL):
        if not os.access(exe, os.X_OK):
            return f"{exe} missing: run scripts/kube-tools.sh (as root; builds once, ~7 min)"
    return None


def _run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(cmd), input=input, capture_output=True, text=True, check=False,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    return res


def nsexec(netns: str | None, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)


def netns_pids(netns: str) -> list[int]:
    res = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


@dataclass
class Netns:
    """A network namespace this code created (and deletes): ``<prefix>-<random>``, lo up."""

    name: str

    @classmethod
    def create(cls, prefix: str = "kapi") -> Netns:
        name = f"{prefix}-{secrets.token_hex(4)}"
        _run(["ip", "netns", "add", name])
        ns = cls(name)
        try:
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        """Kill whatever still runs inside (only processes of this namespace), then delete it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = netns_pids(self.name)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline and netns_pids(self.name):
                time.sleep(0.05)
        _run(["ip", "netns", "del", self.name], check=False)


@contextlib.contextmanager
def temp_netns(prefix: str = "kapi") -> Iterator[str]:
    ns = Netns.create(prefix)
    try:
        yield ns.name
    finally:
        ns.delete()


def free_ports(netns: str | None, count: int) -> list[int]:
    """``count`` distinct TCP ports free inside ``netns`` (bound at once, then released)."""
    code = (
        "import socket\n"
        f"ss=[socket.socket() for _ in range({count})]\n"
        "[s.bind(('0.0.0.0',0)) for s in ss]\n"
        "print(' '.join(str(s.getsockname()[1]) for s in ss))\n"
    )
    out = _run(nsexec(netns, [sys.executable, "-I", "-c", code])).stdout
    return [int(p) for p in out.split()]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pki:
    """CA, serving certificate, client certificates and the service-account key pair."""

    dir: Path
    sans: tuple[str, ...]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca-key.pem"

    @property
    def serving(self) -> tuple[Path, Path]:
        return self.dir / "apiserver.pem", self.dir / "apiserver-key.pem"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa-key.pem"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def create(self) -> Pki:
        self.dir.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "2",
                 "-subj", "/CN=flanneld-py test kube CA", cwd=self.dir)
        san = ",".join(self.sans)
        self._issue("apiserver", "/CN=kube-apiserver", "serverAuth", f"subjectAltName={san}\n")
        # The service-account signing key (ES256), and its public half for verification.
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-out", str(self.sa_key), cwd=self.dir)
        _openssl("pkey", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub), cwd=self.dir)
        return self

    def _issue(self, name: str, subj: str, usage: str, extra: str = "") -> tuple[Path, Path]:
        key, csr = self.dir / f"{name}-key.pem", self.dir / f"{name}.csr"
        cert, ext = self.dir / f"{name}.pem", self.dir / f"{name}.ext"
        ext.write_text(f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyEncipherment\n{extra}")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", subj, cwd=self.dir)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=self.dir)
        return cert, key

    def client_cert(self, name: str, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
        """A client certificate the apiserver authenticates as ``user`` in ``groups``."""
        subj = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
        return self._issue(name, subj, "clientAuth")


@dataclass
class KubeApiServer:
    """etcd + kube-apiserver inside ``netns``; clients use ``url`` (https://host:port) there."""

    netns: str
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "kapi"
    bind_address: str = "0.0.0.0"  # inside the namespace only
    extra_args: tuple[str, ...] = ()
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flannel-kapi-")))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    flannel_token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd: EtcdServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    pki: Pki | None = None

    # -- addresses and files ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None
        return self.pki.ca

    @property
    def log_file(self) -> Path:
        return self.dir / "kube-apiserver.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> KubeApiServer:
        missing = kube_tools_missing()
        if missing:
            raise RuntimeError(missing)
        if self.pki is None:
            sans = ["IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
                    "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                    "DNS:kubernetes.default.svc.cluster.local"]
            if self.host != "127.0.0.1":
                sans.insert(0, f"IP:{self.host}")
            self.pki = Pki(self.dir / "pki", tuple(sans)).create()
            (self.dir / "tokens.csv").write_text(
                f'{self.admin_token},{ADMIN_USER},uid-admin,"system:masters"\n'
                f'{self.flannel_token},{FLANNEL_USER},uid-flannel,"{",".join(FLANNEL_GROUPS)}"\n'
            )
        if self.etcd is None:
            eport, pport, *rest = free_ports(self.netns, 3 if not self.port else 2)
            if not self.port:
                self.port = rest[0]
            self.etcd = EtcdServer(name=self.name, host="127.0.0.1", client_port=eport, peer_port=pport,
                                   data_dir=str(self.dir / "etcd"), netns=self.netns)
            (self.dir / "etcd").mkdir(exist_ok=True)
        if self.etcd.proc is None:
            self.etcd.start()
        self._start_apiserver()
        self.wait_ready(timeout)
        return self

    def _command(self) -> list[str]:
        assert self.pki is not None and self.etcd is not None
        cert, key = self.pki.serving
        return [
            str(KUBE_APISERVER),
            f"--etcd-servers={self.etcd.endpoint}",
            f"--bind-address={self.bind_address}",
            f"--secure-port={self.port}",
            f"--advertise-address={self.host}",
            "--insecure-port=0",
            f"--cert-dir={self.dir / 'certs'}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.pki.ca}",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--enable-admission-plugins={ADMISSION_ON}",
            f"--disable-admission-plugins={ADMISSION_OFF}",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--logtostderr=true",
            "--v=0",
            *self.extra_args,
        ]

    def _start_apiserver(self) -> None:
        log = open(self.log_file, "ab")  # noqa: SIM115 (kept open by the child)
        try:
            self.proc = subprocess.Popen(nsexec(self.netns, self._command()), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def ready(self) -> bool:
        res = _run(nsexec(self.netns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
                                       "--cacert", str(self.ca_file), "-H",
                                       f"Authorization: Bearer {self.admin_token}", f"{self.url}/readyz"]),
                   check=False)
        return res.stdout.strip() == "200"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s at {self.url}:\n{self.log_tail()}")

    def stop_apiserver(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """Stop the apiserver and its etcd (data kept: start() brings the same cluster back)."""
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.stop()

    def restart(self, timeout: float = 60.0) -> None:
        """Restart the apiserver (etcd keeps running); returns once /readyz says ok."""
        self.stop_apiserver()
        self._start_apiserver()
        self.wait_ready(timeout)

    def cleanup(self) -> None:
        """Kill both processes and delete the temp dir; safe to call at any point, twice."""
        try:
            self.stop_apiserver()
        finally:
            try:
                if self.etcd is not None:
                    self.etcd.stop()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients ---------------------------------------------------------------------------------

    def kubeconfig(self, path: Path | None = None, *, token: str | None = None,
                   client_cert: tuple[Path, Path] | None = None, embed: bool = False,
                   user: str = "user") -> Path:
        """A kubeconfig for ``token`` (default: admin) or a client certificate; ``embed`` puts the
        CA (and cert) in as -data instead of file paths."""
        import base64

        path = path or self.dir / f"kubeconfig-{secrets.token_hex(3)}"
        cluster: dict[str, object] = {"server": self.url}
        if embed:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_file.read_bytes()).decode()
        else:
            cluster["certificate-authority"] = str(self.ca_file)
        auth: dict[str, object] = {}
        if client_cert is not None:
            cert, key = client_cert
            if embed:
                auth["client-certificate-data"] = base64.b64encode(cert.read_bytes()).decode()
                auth["client-key-data"] = base64.b64encode(key.read_bytes()).decode()
            else:
                auth["client-certificate"], auth["client-key"] = str(cert), str(key)
        else:
            auth["token"] = token if token is not None else self.admin_token
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": cluster}],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": "test", "context": {"cluster": self.name, "user": user}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
        path.chmod(0o600)
        return path

    @property
    def admin_kubeconfig(self) -> Path:
        path = self.dir / "admin.kubeconfig"
        if not path.exists():
            self.kubeconfig(path)
        return path

    def nsexec(self, cmd: Sequence[str]) -> list[str]:
        return nsexec(self.netns, cmd)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``ip netns exec NS kubectl --kubeconfig ... ARGS`` (admin unless ``kubeconfig``)."""
        cfg = kubeconfig or self.admin_kubeconfig
        return _run(self.nsexec([str(KUBECTL), f"--kubeconfig={cfg}", *args]), check=check,
                    input=input, timeout=timeout)

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> dict[str, object]:
        out = self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout
        obj: dict[str, object] = json.loads(out)
        return obj

    def apply(self, manifest: str | dict[str, object], *args: str) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.kubectl("apply", "-f", "-", *args, input=text).stdout

    def serviceaccount_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token for a real ServiceAccount from the TokenRequest API, signed by this
        apiserver with --service-account-signing-key-file: what kubelet mounts into pods."""
        req = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"audiences": [SA_ISSUER], "expirationSeconds": seconds}}
        out = self.kubectl("create", "--raw",
                           f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", "-f", "-",
                           input=json.dumps(req)).stdout
        token: str = json.loads(out)["status"]["token"]
        return token

    def etcdctl(self, *args: str) -> str:
        assert self.etcd is not None
        env = dict(os.environ, ETCDCTL_API="3")
        res = subprocess.run(self.nsexec(["etcdctl", "--endpoints", self.etcd.endpoint, *args]), env=env,
                             capture_output=True, text=True, check=True)
        return res.stdout

    def python(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """The repo's .venv Python inside the namespace (``env`` added to this process's)."""
        cmd = self.nsexec(["env", *(f"{k}={v}" for k, v in (env or {}).items()), str(VENV_PYTHON), *args])
        return _run(cmd, input=input, check=check, timeout=timeout)


@contextlib.contextmanager
def running_kube_apiserver(netns: str | None = None, **kwargs: object) -> Iterator[KubeApiServer]:
    """A started KubeApiServer; in a namespace of its own unless ``netns`` is given; everything
    (processes, files, the namespace it made) removed on exit, also on failure."""
    own = Netns.create("kapi") if netns is None else None
    try:
        server = KubeApiServer(netns=own.name if own else str(netns), **kwargs)  # type: ignore[arg-type]
        try:
            server.start()
            yield server
        finally:
            server.cleanup()
    finally:
        if own is not None:
            own.delete()
