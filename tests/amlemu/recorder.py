"""A local HTTPS stand-in for Azure ML's REST API that records what the real MLClient sends.

The real ``azure.ai.ml.MLClient`` is pointed at it through a custom cloud (its ``resource_manager``
address is ``https://127.0.0.1:<port>/``); TLS uses a self-signed certificate made here with
``cryptography`` (SAN ``IP:127.0.0.1`` and the fake blob host) and trusted through
``REQUESTS_CA_BUNDLE``. Blob uploads go to ``<account>.blob.core.windows.net``, which
:func:`guard_network` maps to 127.0.0.1 while refusing every other address, so nothing can leave the
machine. The credential hands out an unsigned JWT (pipeline submission decodes it).

The server keeps just enough state to answer like the service: resources PUT are returned by GET and
list, asset containers report their next version, long-running operations finish at once, an online
endpoint has a scoring URI here whose answers follow the project's scoring contract (or, with
``scorer`` set, the real score.py's), uploaded blobs are kept and served back (tests read their bytes,
``models.download`` works), and the workspace's MLflow surface
(``/mlflow/v2.0/<workspace path>/api/2.0/mlflow/...``, what azureml-mlflow calls: see
``azureml/mlflow/_store/azureml_reststore.py``) is answered by a real MLflow tracking server in-process.

It refuses what the service refuses, where that is documented (:meth:`Recorder.refusal`): online endpoint
and deployment names (3-32 characters, a letter first, letters/digits/'-', not ending in '-';
azure-ai-ml ``EndpointConfigurations`` and
https://learn.microsoft.com/azure/machine-learning/how-to-deploy-online-endpoints), a deployment without
``endpointComputeType`` or ``instanceType`` (required by the managed online deployment REST schema), traffic
that names a deployment the endpoint does not have or does not sum to 100 (or 0), deleting a deployment
that still takes traffic, asset names outside letters/digits/'-'/'_'/'.' (max 255), and a job without
compute.
"""

from __future__ import annotations

import base64
import datetime as _dt
import ipaddress
import json
import re
import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "rg-test"
WORKSPACE = "ws-test"
LOCATION = "eastus"
BLOB_ACCOUNT = "fakestore"
BLOB_HOST = f"{BLOB_ACCOUNT}.blob.core.windows.net"
WORKSPACE_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
    f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
# Where azureml-mlflow sends a workspace's MLflow calls: https://<region host>/mlflow/v2.0<workspace path>.
MLFLOW_PREFIX = f"/mlflow/v2.0{WORKSPACE_PATH}"
ENDPOINT_NAME = r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?"
ASSET_NAME = r"[a-zA-Z0-9][a-zA-Z0-9\-_.]{0,254}"
DATA_SCIENTIST_ROLE = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
MSI_PATH = "/msi/token"
MSI_SECRET = "recorder-msi-secret"


# ------------------------------------------------------------------------------------------- network guard


def guard_network(monkeypatch, blob_port: Optional[int] = None) -> None:
    """Allow connections to loopback only; the fake blob host resolves to the recorder (``blob_port``).

    Storage URLs carry no port (the SDK builds ``https://<account>.blob.<suffix>/``), so the port is
    swapped here too; TLS still checks the blob host's name against the recorder's certificate.
    """
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host, port, *args, **kwargs):
        if host == BLOB_HOST:
            host, port = "127.0.0.1", blob_port or port
        if isinstance(host, str) and host not in LOOPBACK:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise OSError(f"network access blocked in tests: {host}") from None
        return real_getaddrinfo(host, port, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in LOOPBACK and not ipaddress.ip_address(host).is_loopback:
                raise OSError(f"network access blocked in tests: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# ------------------------------------------------------------------------------------------- TLS + credential


def make_certificate(folder: Path, hosts: tuple = ()) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, the fake blob host and ``hosts``: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aml-recorder")])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName(BLOB_HOST),
                    x509.DNSName("localhost"),
                    *[x509.DNSName(host) for host in hosts],
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class FakeCredential:
    """Unsigned JWTs with the audience MLClient asks for (pipeline submission reads the token's claims)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        audience = (scopes[0] if scopes else "https://management.azure.com/").replace("/.default", "")
        expires = int(_dt.datetime.now().timestamp()) + 3600

        def part(data: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

        claims = {
            "aud": audience,
            "oid": "11111111-1111-1111-1111-111111111111",
            "tid": "22222222-2222-2222-2222-222222222222",
            "upn": "tester@example.com",
            "exp": expires,
        }
        return AccessToken(f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.", expires)


# ------------------------------------------------------------------------------------------- recorder


@dataclass
class Request:
    method: str
    host: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: Any
    raw: bytes = b""

    @property
    def relative(self) -> str:
        """The path below the workspace (``jobs/x``), or the full path outside it."""
        return self.path[len(WORKSPACE_PATH) + 1 :] if self.path.startswith(WORKSPACE_PATH + "/") else self.path

    def __str__(self) -> str:
        host = "blob " if self.host.startswith(BLOB_ACCOUNT) else ""
        return f"{self.method} {host}{self.relative}"


@dataclass
class Recorder:
    port: int = 0
    requests: List[Request] = field(default_factory=list)
    resources: Dict[str, dict] = field(default_factory=dict)
    # deployment name -> HTTP status its scoring answers with (default 200).
    scoring_status: Dict[str, int] = field(default_factory=dict)
    # "/container/path" -> bytes of every blob uploaded (and block-list pieces while a blob is assembled).
    blobs: Dict[str, bytes] = field(default_factory=dict)
    blocks: Dict[tuple, bytes] = field(default_factory=dict)
    # Optional: (deployment name, request body) -> (status, answer); set by the emulation to run score.py.
    scorer: Any = None
    # Optional: called with (relative path, stored body) after a resource is created or replaced.
    on_put: Any = None
    # Optional: the WSGI app answering the workspace's MLflow API (see mlflow_app()).
    mlflow: Any = None
    # Azure RBAC at the workspace scope: role assignments (properties.principalId / roleDefinitionId), and
    # the status the role-assignment list answers with (403: the caller may not read them).
    role_assignments: List[dict] = field(default_factory=list)
    role_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def sequence(self, include_blob: bool = False) -> List[str]:
        return [str(r) for r in self.requests if include_blob or not r.host.startswith(BLOB_ACCOUNT)]

    def find(self, method: str, pattern: str) -> List[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.relative)]

    def put(self, relative: str, body: dict) -> None:
        """Seed a resource, as if it existed in the workspace before the test."""
        path = f"{WORKSPACE_PATH}/{relative}"
        self.resources[path] = {**body, "id": path, "name": relative.rstrip("/").split("/")[-1]}

    # ------------------------------------------------------------------ answers

    def blob(self, suffix: str) -> bytes:
        """The bytes of the one uploaded blob whose path ends with ``suffix``."""
        found = [path for path in self.blobs if path.endswith(suffix)]
        assert len(found) == 1, (suffix, found)
        return self.blobs[found[0]]

    def answer(self, request: Request) -> tuple[int, dict, Any]:
        if request.host.startswith(BLOB_ACCOUNT):
            return self._blob(request)
        if request.path == "/score":
            return self._score(request)
        if request.path.startswith(MLFLOW_PREFIX):
            return self._mlflow(request)
        if request.path == MSI_PATH:
            return self._msi_token(request)
        if request.path == "/metadata/endpoints":
            return 200, {}, self._cloud_metadata()
        refusal = self.refusal(request)
        if refusal is not None:
            return 400, {}, {"error": {"code": "UserError", "message": refusal}}
        path = request.path.rstrip("/")
        if path == WORKSPACE_PATH:
            return 200, {}, self._workspace()
        relative = request.relative
        handler = [
            (r"datastores/[^/]+/listSecrets", self._datastore_secrets),
            (r"datastores/[^/]+", self._datastore),
            (r"datastores", self._datastores),
            (
                r"(codes|data|models|environments|components)/[^/]+/versions/[^/]+/startPendingUpload",
                self._pending_upload,
            ),
            (r"onlineEndpoints/[^/]+/listKeys", self._keys),
            (r"onlineEndpoints/[^/]+/token", self._keys),
            (r"providers/Microsoft.Authorization/roleAssignments", self._role_assignments),
        ]
        for pattern, function in handler:
            if re.fullmatch(pattern, relative):
                return function(request)
        if request.method == "PUT":
            return self._put(request, path)
        if request.method == "DELETE":
            existed = self.resources.pop(path, None) is not None
            return (200 if existed else 204), {}, None
        if request.method == "GET":
            return self._get(request, path)
        return 404, {}, {"error": {"code": "NotFound", "message": f"recorder has no route for {request}"}}

    def _workspace(self) -> dict:
        return {
            "id": WORKSPACE_PATH,
            "name": WORKSPACE,
            "location": LOCATION,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "kind": "Default",
            "properties": {
                "discoveryUrl": f"{self.base_url}/discovery",
                "workspaceId": "33333333-3333-3333-3333-333333333333",
                "mlFlowTrackingUri": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WORKSPACE_PATH}",
                "storageAccount": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Storage/storageAccounts/{BLOB_ACCOUNT}",
            },
            "identity": {"type": "SystemAssigned"},
        }

    def _datastore_body(self, name: str) -> dict:
        return {
            "id": f"{WORKSPACE_PATH}/datastores/{name}",
            "name": name,
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": BLOB_ACCOUNT,
                "containerName": "azureml-blobstore",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
            },
        }

    def _datastore(self, request):
        return 200, {}, self._datastore_body(request.relative.split("/")[1])

    def _datastores(self, request):
        return 200, {}, {"value": [self._datastore_body("workspaceblobstore")]}

    def _datastore_secrets(self, request):
        return 200, {}, {"secretsType": "AccountKey", "key": base64.b64encode(b"recorder-key").decode()}

    def _pending_upload(self, request):
        kind, name, _, version = request.relative.split("/")[:4]
        blob = f"https://{BLOB_HOST}/azureml-blobstore/LocalUpload/{uuid.uuid4().hex}/{name}"
        return (
            200,
            {},
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob,
                    "storageAccountArmId": "x",
                    "credential": {"credentialType": "SAS", "sasUri": f"{blob}?sv=2021-08-06&sig=recorder"},
                },
                "pendingUploadId": uuid.uuid4().hex,
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    def grant(self, principal_id: str, role_definition_id: str = DATA_SCIENTIST_ROLE) -> None:
        self.role_assignments.append(
            {
                "properties": {
                    "principalId": principal_id,
                    "scope": WORKSPACE_PATH,
                    "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{role_definition_id}",
                }
            }
        )

    def _role_assignments(self, request):
        if self.role_status != 200:
            return self.role_status, {}, {"error": {"code": "AuthorizationFailed", "message": "not allowed to read"}}
        wanted = re.search(r"principalId eq '([^']+)'", (request.query.get("$filter") or [""])[0])
        return (
            200,
            {},
            {
                "value": [
                    a for a in self.role_assignments if not wanted or a["properties"]["principalId"] == wanted.group(1)
                ]
            },
        )

    def _cloud_metadata(self) -> list:
        """ARM's cloud list (``GET https://management.azure.com/metadata/endpoints?api-version=2019-05-01``), which
        azureml-mlflow and azure-ai-ml read at start; the public cloud's entry."""
        return [
            {
                "name": "AzureCloud",
                "portal": "https://portal.azure.com",
                "resourceManager": "https://management.azure.com/",
                "authentication": {
                    "loginEndpoint": "https://login.microsoftonline.com/",
                    "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
                    "tenant": "common",
                    "identityProvider": "AAD",
                },
                "media": "https://rest.media.azure.net",
                "graphAudience": "https://graph.windows.net/",
                "graph": "https://graph.windows.net/",
                "name_": "AzureCloud",
                "suffixes": {
                    "azureDataLakeStoreFileSystem": "azuredatalakestore.net",
                    "acrLoginServer": "azurecr.io",
                    "sqlServerHostname": "database.windows.net",
                    "keyVaultDns": "vault.azure.net",
                    "storage": "core.windows.net",
                    "azureFrontDoorEndpointSuffix": "azurefd.net",
                },
                "batch": "https://batch.core.windows.net/",
                "sqlManagement": "https://management.core.windows.net:8443/",
                "vmImageAliasDoc": "",
                "activeDirectoryDataLake": "https://datalake.azure.net/",
                "gallery": "https://gallery.azure.com/",
            }
        ]

    def _msi_token(self, request):
        """AML compute's managed identity endpoint (azure-identity's AzureMLCredential: MSI_ENDPOINT/MSI_SECRET,
        api-version 2017-09-01, ``expires_on`` in epoch seconds)."""
        if request.headers.get("secret") != MSI_SECRET:
            return 401, {}, {"error": "invalid secret"}
        resource = (request.query.get("resource") or ["https://management.azure.com"])[0]
        token = FakeCredential().get_token(resource)
        return (
            200,
            {},
            {
                "access_token": token.token,
                "expires_on": token.expires_on,
                "resource": resource,
                "token_type": "Bearer",
                "client_id": (request.query.get("clientid") or [""])[0],
            },
        )

    def _keys(self, request):
        return (
            200,
            {},
            {
                "primaryKey": "recorder-primary-key",
                "secondaryKey": "recorder-secondary-key",
                "accessToken": "recorder-token",
                "expiryTimeUtc": 0,
            },
        )

    def _blob(self, request):
        stamp = {"ETag": '"0x1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}
        comp = (request.query.get("comp") or [None])[0]
        if request.method == "PUT":
            if comp == "block":
                self.blocks[(request.path, request.query["blockid"][0])] = request.raw
            elif comp == "blocklist":
                ids = re.findall(r"<(?:Latest|Uncommitted|Committed)>([^<]+)<", request.raw.decode())
                self.blobs[request.path] = b"".join(self.blocks.pop((request.path, i), b"") for i in ids)
            elif comp is None:
                self.blobs[request.path] = request.raw
            # Setting metadata (?comp=metadata) answers 200; creating a blob 201.
            return (200 if comp == "metadata" else 201), {**stamp, "x-ms-request-server-encrypted": "true"}, None
        if request.method == "GET" and comp == "list":
            container = "/" + request.path.strip("/").split("/")[0]
            prefix = (request.query.get("prefix") or [""])[0]
            names = sorted(
                path[len(container) + 1 :]
                for path in self.blobs
                if path.startswith(container + "/") and path[len(container) + 1 :].startswith(prefix)
            )
            entries = "".join(
                f"<Blob><Name>{name}</Name><Properties><Last-Modified>{stamp['Last-Modified']}</Last-Modified>"
                f"<Etag>0x1</Etag><Content-Length>{len(self.blobs[container + '/' + name])}</Content-Length>"
                "<BlobType>BlockBlob</BlobType></Properties></Blob>"
                for name in names
            )
            return (
                200,
                {"Content-Type": "application/xml"},
                (
                    '<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>'
                    + entries
                    + "</Blobs><NextMarker/></EnumerationResults>"
                ),
            )
        data = self.blobs.get(request.path)
        if data is None:
            return 404, {"x-ms-error-code": "BlobNotFound"}, None
        headers = {
            **stamp,
            "x-ms-blob-type": "BlockBlob",
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        wanted = request.headers.get("x-ms-range") or request.headers.get("range")
        if request.method == "HEAD":
            return 200, {**headers, "x-content-length": str(len(data))}, None
        if wanted and data:
            start, _, end = wanted.split("=", 1)[1].partition("-")
            end = min(int(end) if end else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {int(start)}-{end}/{len(data)}"
            return 206, headers, data[int(start) : end + 1]
        return 200, headers, data

    def _mlflow(self, request):
        """The workspace's MLflow REST API: the path below the prefix, answered by a real tracking server."""
        if self.mlflow is None:
            return 404, {}, {"error_code": "ENDPOINT_NOT_FOUND", "message": "no MLflow server behind this recorder"}
        url = request.path[len(MLFLOW_PREFIX) :]
        query = {key: values for key, values in request.query.items()}
        response = self.mlflow.open(
            url,
            method=request.method,
            query_string=query,
            data=request.raw,
            headers={"Content-Type": request.headers.get("content-type", "application/json")},
        )
        return (
            response.status_code,
            {"Content-Type": response.headers.get("Content-Type", "application/json")},
            response.get_data(),
        )

    # ------------------------------------------------------------------ refusals

    def refusal(self, request: Request) -> Optional[str]:
        """Why the service would refuse ``request`` (None: it would not); see the module docstring."""
        relative, body = request.relative, request.body if isinstance(request.body, dict) else {}
        properties = body.get("properties") or {}
        endpoint = re.fullmatch(r"onlineEndpoints/([^/]+)(?:/deployments/([^/]+))?", relative)
        if endpoint and request.method == "PUT":
            for kind, name in (("endpoint", endpoint.group(1)), ("deployment", endpoint.group(2))):
                if name is not None and not (3 <= len(name) <= 32 and re.fullmatch(ENDPOINT_NAME, name)):
                    return (
                        f"Invalid {kind} name '{name}': 3-32 characters, starting with a letter, letters, "
                        "digits and '-' only, not ending with '-'"
                    )
            if endpoint.group(2) is not None:
                missing = [key for key in ("endpointComputeType", "instanceType") if not properties.get(key)]
                if missing:
                    return f"Deployment {endpoint.group(2)}: required field(s) missing: {', '.join(missing)}"
            else:
                traffic = properties.get("traffic") or {}
                deployments = {
                    key.rsplit("/", 1)[-1]
                    for key in self.resources
                    if key.startswith(f"{WORKSPACE_PATH}/{relative}/deployments/")
                }
                unknown = sorted(set(traffic) - deployments)
                if unknown:
                    return f"Traffic set for deployment(s) that do not exist: {', '.join(unknown)}"
                if traffic and sum(int(v) for v in traffic.values()) not in (0, 100):
                    return f"The sum of traffic values must be 100 (or 0), got {sum(int(v) for v in traffic.values())}"
        if endpoint and endpoint.group(2) and request.method == "DELETE":
            owner = self.resources.get(f"{WORKSPACE_PATH}/onlineEndpoints/{endpoint.group(1)}", {})
            if int((owner.get("properties", {}).get("traffic") or {}).get(endpoint.group(2), 0)) > 0:
                return f"Deployment {endpoint.group(2)} takes traffic; set its traffic to 0 before deleting it"
        asset = re.fullmatch(r"(models|data|environments|codes|components)/([^/]+)/versions/[^/]+", relative)
        if asset and request.method == "PUT" and not re.fullmatch(ASSET_NAME, asset.group(2)):
            return f"Invalid asset name '{asset.group(2)}': letters, digits, '-', '_' and '.', at most 255"
        if re.fullmatch(r"jobs/[^/]+", relative) and request.method == "PUT":
            if properties.get("jobType") == "Command" and not properties.get("computeId"):
                return "A command job needs a compute (computeId is required)"
        return None

    def _put(self, request, path: str):
        body = request.body if isinstance(request.body, dict) else {}
        relative = request.relative
        name = relative.rstrip("/").split("/")[-1]
        stored = json.loads(json.dumps(body))
        stored.update(id=path, name=name)
        properties = stored.setdefault("properties", {})
        properties.setdefault("provisioningState", "Succeeded")
        if relative.startswith("jobs/"):
            properties.setdefault("status", "NotStarted")
            properties["services"] = {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}?wsid={WORKSPACE_PATH}"}}
        if re.fullmatch(r"onlineEndpoints/[^/]+", relative):
            properties["scoringUri"] = f"{self.base_url}/score"
            properties.setdefault("traffic", {})
        if re.fullmatch(r"onlineEndpoints/[^/]+/deployments/[^/]+", relative):
            properties.setdefault("scaleSettings", {"scaleType": "Default"})
        if re.fullmatch(r"models/[^/]+/versions/[^/]+", relative):
            properties.setdefault("flavors", {})
        if relative.startswith("computes/"):
            stored.setdefault("location", LOCATION)
            identity = stored.get("identity") or {}
            if identity.get("type", "").lower() == "systemassigned":
                # The service creates the identity and answers with its principal.
                identity.setdefault("principalId", str(uuid.uuid5(uuid.NAMESPACE_URL, path)))
                identity.setdefault("tenantId", "22222222-2222-2222-2222-222222222222")
        existed = path in self.resources
        self.resources[path] = stored
        if self.on_put is not None:
            self.on_put(relative, stored)
        return (200 if existed else 201), {}, stored

    def _get(self, request, path: str):
        if path in self.resources:
            return 200, {}, self.resources[path]
        prefix = path + "/"
        children = [
            body for key, body in self.resources.items() if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]
        relative = request.relative
        if re.fullmatch(r"models/[^/]+/versions", relative) and "stage" in request.query:
            stage = request.query["stage"][0].lower()
            return (
                200,
                {},
                {
                    "value": [
                        body for body in children if str(body.get("properties", {}).get("stage", "")).lower() == stage
                    ]
                },
            )
        if re.fullmatch(r"(codes|data|models|environments|components)/[^/]+", relative):
            versions = [body for key, body in self.resources.items() if key.startswith(path + "/versions/")]
            if not versions:
                return 404, {}, {"error": {"code": "UserError", "message": "container not found"}}
            numbers = [int(v["name"]) for v in versions if str(v["name"]).isdigit()]
            latest = str(max(numbers)) if numbers else versions[-1]["name"]
            return (
                200,
                {},
                {
                    "id": path,
                    "name": relative.split("/")[1],
                    "properties": {
                        "latestVersion": latest,
                        "nextVersion": str(int(latest) + 1 if latest.isdigit() else 1),
                    },
                },
            )
        if children or relative.endswith(("versions", "deployments")):
            return 200, {}, {"value": children}
        return 404, {}, {"error": {"code": "UserError", "message": f"{relative} not found"}}

    def _score(self, request):
        deployment = request.headers.get("azureml-model-deployment")
        if deployment is None:
            endpoint = next(
                (body for key, body in self.resources.items() if re.search(r"/onlineEndpoints/[^/]+$", key)), {}
            )
            traffic = endpoint.get("properties", {}).get("traffic", {})
            deployment = max(traffic, key=traffic.get) if traffic else None
        if self.scorer is not None:
            status, answer = self.scorer(deployment, request.body)
            return status, {}, answer
        status = self.scoring_status.get(deployment, 200)
        if status != 200:
            return status, {}, {"error": f"deployment {deployment} is failing"}
        items = (request.body or {}).get("data", [])
        return (
            200,
            {},
            {
                "predictions": [
                    {"label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}} for _ in items
                ],
                "model": {"name": "automotive-sentiment", "version": deployment},
            },
        )


def _handler(recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the recording is the log
            pass

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = self._read_chunked()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = {"bytes": len(raw)}
            url = urlsplit(self.path)
            request = Request(
                self.command,
                self.headers.get("Host", ""),
                url.path,
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                body,
                raw,
            )
            with recorder.lock:
                recorder.requests.append(request)
                status, headers, payload = recorder.answer(request)
            data = (
                payload
                if isinstance(payload, (bytes, type(None)))
                else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
            )
            self.send_response(status)
            if payload is not None and not isinstance(payload, (str, bytes)) and "Content-Type" not in headers:
                self.send_header("Content-Type", "application/json")
            # A HEAD answer announces the size of the body it does not send.
            length = headers.pop("x-content-length", None) or str(len(data or b""))
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("x-ms-request-id", uuid.uuid4().hex)
            self.send_header("Content-Length", length)
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)

        def _read_chunked(self) -> bytes:
            chunks = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return chunks
                chunks += self.rfile.read(size)
                self.rfile.readline()

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

    return Handler


class RecorderServer:
    """The recorder on a free loopback port, serving TLS in a thread."""

    def __init__(self, folder: Path, hosts: tuple = ()):
        self.cert, key = make_certificate(folder, hosts)
        self.recorder = Recorder()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.recorder))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.recorder.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ml_client(self):
        """A real MLClient of the fake workspace, talking to this server (a new cloud name each time)."""
        from azure.ai.ml import MLClient

        base = self.recorder.base_url + "/"
        cloud = f"recorder-{uuid.uuid4().hex[:8]}"
        metadata = {
            "azure_portal": base,
            "resource_manager": base,
            "active_directory": base,
            "aml_resource_id": base,
            "storage_endpoint": "core.windows.net",
            "registry_discovery_endpoint": base,
        }
        return MLClient(FakeCredential(), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, cloud=cloud, cloud_metadata=metadata)


# ------------------------------------------------------------------------------------------- test support


def build(overrides: List[str], output_root: Path, name: str = "run", space: Optional[dict] = None):
    """A plan the way the CLI builds it (compose + build_plan), with outputs under ``output_root``.

    ``space`` sets search dimensions as ``search.space.<name>=<sweep>`` arguments do.
    """
    from finetune.cli.main import compose
    from finetune.plan.build import build_plan

    overrides = list(overrides) + [f"output_root={output_root}"]
    return build_plan(compose(overrides, space or {}), overrides, name)


def plain(value: Any) -> Any:
    """JSON-plain copy of an SDK dict (OrderedDicts, tuples)."""
    return json.loads(json.dumps(value, default=str))


def normalise(value: Any, replacements: Dict[str, str]) -> Any:
    """``value`` with machine- and time-dependent strings replaced (longest first)."""
    text = json.dumps(plain(value))
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(json.dumps(old)[1:-1], replacements[old])
    return json.loads(text)
