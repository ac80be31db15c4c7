"""A real single-node Kubernetes cluster on this machine, for Orchard's api and e2e tests.

Two levels:
  api   etcd + kube-apiserver: seconds to start; CRDs, watches, status subresources.
  node  adds containerd + runc, CNI bridge, kubelet, kube-controller-manager,
        kube-scheduler, kube-proxy (iptables) and CoreDNS (cluster.local only): real
        pods, Services, their DNS names and PVCs.

Everything runs as root on a private bridge (orchard0, pods 10.244.0.0/24, services
10.96.0.0/16); forwarding between the bridge and any other interface is dropped, and so
is anything another interface delivers for the bridge's network, so no traffic leaves
the machine and none comes in. The cluster's DNS forwards nothing. Every process
started is recorded by PID (with its start time, so a reused PID is never signalled) and
stopped by that PID.

    python -m tests.cluster.harness up [--level api|node] [--unless-external]
    python -m tests.cluster.harness restart COMPONENT...   (e.g. etcd kube-apiserver)
    python -m tests.cluster.harness status | down | preflight

The images the pods run are built and loaded by images/build.py
(`python -m images.build [NAME...]`).

Modules, in the order `up` needs them: common (paths, addresses, helpers), preflight,
processes, pki, network, components, images (pause image, containerd imports), dns (a
minimal DNS client), lifecycle (up, down, restart, status).
"""
