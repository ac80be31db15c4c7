"""Command lines and configuration files of every component; pure but for the files
`write_node_configs` writes."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import yaml

from .common import (
    API_PORT,
    AUDIT_LOG,
    BRIDGE,
    CLUSTER_DOMAIN,
    CNI_BIN,
    CNI_NET,
    CONFIG,
    CONTAINERD_SOCK,
    DNS_IP,
    DNS_PORT,
    ETCD_CLIENT,
    ETCD_PEER,
    NODE_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    PKI,
    POD_CIDR,
    POD_LOGS,
    RUN,
    SERVICE_CIDR,
    VAR,
    binary,
    write_if_changed,
)
from .pki import write_kubeconfig


def etcd_cmd() -> list[str]:
    return [
        binary("etcd"),
        "--name=orchard",
        f"--data-dir={VAR / 'etcd'}",
        f"--listen-client-urls={ETCD_CLIENT}",
        f"--advertise-client-urls={ETCD_CLIENT}",
        f"--listen-peer-urls={ETCD_PEER}",
        f"--initial-advertise-peer-urls={ETCD_PEER}",
        f"--initial-cluster=orchard={ETCD_PEER}",
        "--unsafe-no-fsync",  # test data only: no fsync keeps etcd fast on a shared disk
        "--log-level=warn",
    ]


def apiserver_cmd() -> list[str]:
    return [
        binary("kube-apiserver"),
        f"--advertise-address={NODE_IP}",
        f"--bind-address={NODE_IP}",
        f"--secure-port={API_PORT}",
        f"--etcd-servers={ETCD_CLIENT}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}",
        f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={PKI}",
        f"--audit-policy-file={CONFIG / 'audit-policy.yaml'}",
        f"--audit-log-path={AUDIT_LOG}",
        "--audit-log-format=json",
        "--audit-log-maxsize=200",  # MB, then one rotated file
        "--audit-log-maxbackup=1",
        "--v=1",
    ]


def audit_policy() -> dict[str, Any]:
    """Record writes to Orchard's objects (and their subresources) with the request body;
    nothing else, so the log stays small."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {
                "level": "Request",
                "verbs": ["create", "update", "patch", "delete"],
                "resources": [{"group": "orchard.dev"}],
            },
            {"level": "None"},
        ],
    }


def write_apiserver_configs() -> None:
    CONFIG.mkdir(parents=True, exist_ok=True)
    write_if_changed(CONFIG / "audit-policy.yaml", yaml.safe_dump(audit_policy()))


def controller_manager_cmd() -> list[str]:
    kc = str(CONFIG / "controller-manager.kubeconfig")
    return [
        binary("kube-controller-manager"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10257",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--root-ca-file={PKI / 'ca.crt'}",
        f"--service-account-private-key-file={PKI / 'sa.key'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
        f"--cluster-signing-key-file={PKI / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-cidr={POD_CIDR}",
        "--allocate-node-cidrs=false",
        # In-tree dynamic provisioner for single-node clusters: PVCs of the default
        # StorageClass get a directory under /tmp/hostpath_pv, with no extra image.
        "--enable-hostpath-provisioner=true",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_cmd() -> list[str]:
    kc = str(CONFIG / "scheduler.kubeconfig")
    return [
        binary("kube-scheduler"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10259",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def restricted_oom_score() -> bool:
    """True when this process cannot lower its OOM score (no CAP_SYS_RESOURCE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return not (int(line.split()[1], 16) >> 24) & 1
    return False


def containerd_config() -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""# Written by tests/cluster/harness: containerd for the local cluster only.
version = 2
root = "{VAR / "containerd"}"
state = "{RUN / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{CONTAINERD_SOCK}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{VAR / "containerd-opt"}"

{cri}
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root lacks;
  # clamp it to containerd's own score instead of failing every sandbox.
  restrict_oom_score_adj = {"true" if restricted_oom_score() else "false"}
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{RUN / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{RUN / "cni" / "net.d"}"
"""


def cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NET,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(RUN / "cni" / "networks"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config() -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(PKI / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(PKI / "kubelet.crt"),
        "tlsPrivateKeyFile": str(PKI / "kubelet.key"),
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "podLogsDir": str(POD_LOGS),
        # Pods get the cluster's DNS as their only nameserver, and no host resolver: it
        # would send their queries off the machine, and CoreDNS forwards nothing.
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_IP],
        "resolvConf": "",
        "serializeImagePulls": False,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 95,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }


def kube_proxy_config() -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(CONFIG / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "minSyncPeriod": "1s", "syncPeriod": "30s"},
        # Leave the host's conntrack sysctls as they are.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def reverse_zone(cidr: str) -> str:
    """The in-addr.arpa zone of a network on an octet boundary (10.96.0.0/16 -> 96.10...)."""
    net = ipaddress.ip_network(cidr)
    if net.prefixlen % 8:
        raise ValueError(f"{cidr}: a reverse zone needs a prefix on an octet boundary")
    octets = str(net.network_address).split(".")[: net.prefixlen // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa"


def dns_zones() -> list[str]:
    """What the cluster's DNS answers for: the cluster domain, the pod and Service reverse
    zones. A question about any other name is REFUSED: there is no forward plugin."""
    return [CLUSTER_DOMAIN, reverse_zone(POD_CIDR), reverse_zone(SERVICE_CIDR)]


def corefile() -> str:
    zones = dns_zones()
    keys = " ".join(f"{zone}:{DNS_PORT}" for zone in zones)
    return f"""# Written by tests/cluster/harness: the local cluster's DNS. It is authoritative for
# {", ".join(zones)} and answers nothing else (REFUSED):
# no forward plugin, no upstream, so no query leaves the machine.
{keys} {{
    bind {DNS_IP}
    errors
    kubernetes {" ".join(zones)} {{
        kubeconfig {CONFIG / "coredns.kubeconfig"}
        pods insecure
        ttl 5
    }}
    loadbalance
}}
"""


def coredns_cmd() -> list[str]:
    return [binary("coredns"), "-conf", str(CONFIG / "Corefile")]


BOOTSTRAP = """
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
# What CoreDNS's kubernetes plugin reads: kubeadm's system:coredns without what this
# Corefile does not use (Endpoints, and Pods, which only `pods verified` watches).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [services, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
"""


def write_node_configs() -> None:
    CONFIG.mkdir(parents=True, exist_ok=True)
    for name, cert in [
        ("controller-manager", "controller-manager"),
        ("scheduler", "scheduler"),
        ("kubelet", "kubelet-client"),
        ("kube-proxy", "kube-proxy"),
        ("coredns", "coredns"),
    ]:
        user = f"system:node:{NODE_NAME}" if name == "kubelet" else name
        write_kubeconfig(CONFIG / f"{name}.kubeconfig", user, cert)
    write_if_changed(CONFIG / "containerd.toml", containerd_config())
    write_if_changed(CONFIG / "kubelet.yaml", yaml.safe_dump(kubelet_config()))
    write_if_changed(CONFIG / "kube-proxy.yaml", yaml.safe_dump(kube_proxy_config()))
    write_if_changed(CONFIG / "Corefile", corefile())
    net = RUN / "cni" / "net.d"
    net.mkdir(parents=True, exist_ok=True)
    write_if_changed(net / "10-orchard.conflist", json.dumps(cni_config(), indent=2))
