"""The kube subnet manager (``--kube-subnet-mgr``): the node's lease is its podCIDR.

Go flannel's ``pkg/subnet/kube``, behind the same interface as the etcd ``SubnetManager`` (the
lease keeper, the watcher and the daemon do not know which one runs):

- the network config is the ``net-conf.json`` file (``--net-config-path``, mounted from the
  ConfigMap), not an etcd key;
- acquiring: the node's ``spec.podCIDRs`` (or ``spec.podCIDR``) must be assigned (while it is
  empty: "node NAME pod cidr not assigned", retried with backoff and a log line, never an exit)
  and lie inside ``Network`` (``IPv6Network`` for the IPv6 one in dual stack); the lease is
  then published as the node's annotations with one strategic-merge patch through the
  ``nodes/status`` subresource, as Go does (so the ClusterRole needs ``patch`` on
  ``nodes/status`` only).  ``<prefix>/public-ip-overwrite`` on the node replaces our PublicIP;
- a node lease never expires: renewing is nothing; defending (our node's lease changed, seen
  by the watch) patches our annotations back when someone edited them, takes a
  ``public-ip-overwrite`` added (or removed) since as our PublicIP (the store lets the overwrite
  win, so the lease we hold is the one the other nodes see), and gives the lease up when our
  Node is gone or has another podCIDR (the keeper acquires anew: it waits for the Node);
- every failing call of ours (a 403 names the missing permission in the apiserver's words) is
  retried with backoff, never an exit, logged, and shown on /readyz (``report``, wired to the
  readiness details by the daemon's caller);
- once the datapath is programmed the node's ``NetworkUnavailable`` condition is set False
  with reason ``FlannelIsUp`` (``--set-node-network-unavailable``, default true).

Node identity: ``NODE_NAME``, else the pod ``POD_NAMESPACE``/``POD_NAME``'s ``spec.nodeName``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

from flanneld.errors import ConfigError, FlannelError, NetworkConfigError, StoreUnavailableError
from flanneld.kube_client import KubeApiError, KubeClient
from flanneld.kube_store import NODE_LEASE_ID, KubeStore, node_annotations, pod_cidrs
from flanneld.lease import Lease, LeaseAttrs
from flanneld.logging_setup import log_event
from flanneld.netconfig import (
    UNSUPPORTED_FIELD,
    NetworkConfig,
    parse_network_config,
    unsupported_reason,
)
from flanneld.subnet_manager import LeaseLostError, MissingNetworkConfigError, SubnetManager

log = logging.getLogger(__name__)
T = TypeVar("T")


class PodCidrNotAssignedError(FlannelError):
    """The node has no podCIDR yet (the controller manager assigns it): retried."""


class NodeNotFoundError(StoreUnavailableError):
    """Our Node object does not exist (not registered yet, or deleted): retried."""


async def node_identity(client: KubeClient, environ: Mapping[str, str] | None = None) -> str:
    """Go's order: ``NODE_NAME``, else the pod's ``spec.nodeName`` (``POD_NAME`` and
    ``POD_NAMESPACE``); ConfigError when neither is set."""
    env = os.environ if environ is None else environ
    if env.get("NODE_NAME"):
        return env["NODE_NAME"]
    pod, namespace = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
    if not pod or not namespace:
        raise ConfigError("--kube-subnet-mgr: set NODE_NAME (the DaemonSet passes "
                          "spec.nodeName), or POD_NAME and POD_NAMESPACE")
    obj = await client.get_pod(namespace, pod)
    name = (obj.get("spec") or {}).get("nodeName")
    if not name:
        raise ConfigError(f"--kube-subnet-mgr: pod {namespace}/{pod} has no spec.nodeName")
    return str(name)


class KubeSubnetManager(SubnetManager):
    def __init__(self, store: KubeStore, node: str, *, prefix: str,
                 set_network_unavailable: bool = True) -> None:
        super().__init__(store, prefix)
        self.kube = store
        self.client = store.client
        self.node = node
        self.set_network_unavailable = set_network_unavailable
        self._condition_set = False
        # The attributes the backend made (before any public-ip-overwrite): what defending
        # goes back to once an overwrite is gone.
        self._base: LeaseAttrs | None = None
        # (name, text | None): a line for /readyz while an API call fails (the daemon wires
        # it to Readiness.set_detail), None once it works again.
        self.report: Callable[[str, str | None], None] = lambda name, text: None

    async def network_config(self) -> NetworkConfig:
        kv = await self.kube.get(f"{self.prefix}/config")
        if kv is None:
            raise MissingNetworkConfigError(
                f"no network config file at {self.kube.net_config_path} (--net-config-path; "
                "kube-flannel mounts it from the kube-flannel-cfg ConfigMap's net-conf.json)")
        netconf = parse_network_config(kv.value)
        reason = unsupported_reason(netconf)
        if reason is not None:
            raise NetworkConfigError(UNSUPPORTED_FIELD, reason)
        return netconf

    async def _call(self, call: Awaitable[T]) -> T:
        """One API call of our own node's, reported on /readyz while it fails; an API error
        becomes StoreUnavailableError (retried with backoff, never an exit), its text kept: a
        403 names the missing permission.  A 404 is raised as it is (the callers say which
        node is missing)."""
        try:
            result = await call
        except KubeApiError as exc:
            self.report("kube", f"Kubernetes API: {exc}")
            if exc.status == 404:
                raise
            raise StoreUnavailableError(str(exc)) from None
        except StoreUnavailableError as exc:
            self.report("kube", f"Kubernetes API: {exc}")
            raise
        self.report("kube", None)
        return result

    async def _node(self) -> dict[str, Any]:
        try:
            node: dict[str, Any] = await self._call(self.client.get_node(self.node))
        except KubeApiError as exc:  # 404
            raise NodeNotFoundError(
                f"node {self.node} not found ({exc.message}; the node name comes from "
                "NODE_NAME, or from the spec.nodeName of POD_NAMESPACE/POD_NAME)") from None
        return node

    def _patch(self, attrs: LeaseAttrs, current: Mapping[str, str]) -> dict[str, str]:
        """The annotations that differ from what our lease publishes."""
        names = self.kube.names
        want = {
            names.subnet_manager: "true",
            names.backend_type: attrs.backend_type,
            names.backend_data: attrs.backend_data or "null",
            names.public_ip: str(attrs.public_ip),
        }
        if attrs.public_ipv6 is not None:
            want[names.public_ipv6] = str(attrs.public_ipv6)
            want[names.backend_v6_data] = attrs.backend_v6_data or "null"
        return {k: v for k, v in want.items() if current.get(k) != v}

    async def acquire(self, attrs: LeaseAttrs, config: NetworkConfig,
                      previous: IPv4Network | None = None,
                      previous_ipv6: IPv6Network | None = None) -> Lease:
        self._base = attrs
        node = await self._node()
        spec = node.get("spec") or {}
        if isinstance(spec, Mapping) and len(spec.get("podCIDRs") or ()) > 2:
            raise PodCidrNotAssignedError(f"node {self.node} pod cidrs should be IPv4/IPv6 only "
                                          f"or dualstack: {spec.get('podCIDRs')}")
        v4, v6 = pod_cidrs(node)
        if v4 is None:
            raise PodCidrNotAssignedError(f"node {self.node} pod cidr not assigned")
        if not v4.subnet_of(config.network):
            raise PodCidrNotAssignedError(
                f"node {self.node}: pod cidr {v4} lies outside the Network {config.network} "
                "(the controller manager's --cluster-cidr must be the network config's Network)")
        ipv6_subnet: IPv6Network | None = None
        if config.enable_ipv6:
            network6 = config.ipv6_network
            if v6 is None:
                raise PodCidrNotAssignedError(f"node {self.node} IPv6 pod cidr not assigned "
                                              "(EnableIPv6 needs a dual-stack podCIDRs)")
            if network6 is not None and not v6.subnet_of(network6):
                raise PodCidrNotAssignedError(
                    f"node {self.node}: IPv6 pod cidr {v6} lies outside the IPv6Network "
                    f"{network6}")
            ipv6_subnet = v6
        current = node_annotations(node)
        attrs = self._overwrites(attrs, current)
        await self._publish(attrs, current)
        lease = Lease(v4, attrs, expiration=None, etcd_lease_id=NODE_LEASE_ID,
                      ipv6_subnet=ipv6_subnet)
        log_event(log, "lease acquired", subnet=v4, node=self.node,
                  ipv6_subnet=ipv6_subnet or "-")
        return lease

    def _overwrites(self, attrs: LeaseAttrs, current: Mapping[str, str]) -> LeaseAttrs:
        names = self.kube.names
        text = current.get(names.public_ip_overwrite)
        if text:
            try:
                attrs = replace(attrs, public_ip=IPv4Address(text))
            except ValueError:
                log.error("node %s: annotation %s=%r is not an IPv4 address; ignored",
                          self.node, names.public_ip_overwrite, text)
            else:
                log_event(log, "public IP overwritten by the node's annotation",
                          public_ip=text, annotation=names.public_ip_overwrite)
        text = current.get(names.public_ipv6_overwrite)
        if text and attrs.public_ipv6 is not None:
            try:
                attrs = replace(attrs, public_ipv6=IPv6Address(text))
            except ValueError:
                log.error("node %s: annotation %s=%r is not an IPv6 address; ignored",
                          self.node, names.public_ipv6_overwrite, text)
        return attrs

    async def _publish(self, attrs: LeaseAttrs, current: Mapping[str, str]) -> bool:
        patch = self._patch(attrs, current)
        if not patch:
            return False
        try:
            await self._call(self.client.patch_node_status(
                self.node, {"metadata": {"annotations": patch}}))
        except KubeApiError as exc:  # 404: the node went away meanwhile
            raise NodeNotFoundError(str(exc)) from None
        log_event(log, "node annotations published", node=self.node,
                  annotations=",".join(sorted(k.rsplit("/", 1)[-1] for k in patch)))
        return True

    async def renew(self, lease: Lease) -> Lease:
        return lease  # a node's lease lasts as long as the Node

    async def defend(self, lease: Lease) -> tuple[Lease, str]:
        """Our node's lease changed under us (the watch saw it): our annotations are put back
        (someone edited them by hand), a ``public-ip-overwrite`` added or removed since is
        taken as our PublicIP (so the lease we hold is the one the other nodes see: the
        overwrite wins in the store), and a node whose podCIDR changed or which was deleted
        has lost its lease (LeaseLostError: the keeper acquires anew, waiting for the Node)."""
        try:
            node = await self._node()
        except NodeNotFoundError as exc:
            raise LeaseLostError(str(exc)) from None
        v4, v6 = pod_cidrs(node)
        if v4 != lease.subnet or (lease.ipv6_subnet is not None and v6 != lease.ipv6_subnet):
            raise LeaseLostError(f"node {self.node}: pod cidr is now {v4} (was {lease.subnet})")
        current = node_annotations(node)
        attrs = self._overwrites(self._base or lease.attrs, current)
        changed = await self._publish(attrs, current)
        if attrs != lease.attrs:
            lease = replace(lease, attrs=attrs)
        return lease, "reasserted" if changed else "intact"

    async def datapath_ready(self) -> None:
        """``NetworkUnavailable`` False, reason ``FlannelIsUp`` (once per run)."""
        if not self.set_network_unavailable or self._condition_set:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                     "message": "Flannel is running on this node",
                     "lastTransitionTime": now, "lastHeartbeatTime": now}
        try:
            await self._call(self.client.patch_node_status(
                self.node, {"status": {"conditions": [condition]}}))
        except KubeApiError as exc:  # 404
            raise NodeNotFoundError(str(exc)) from None
        self._condition_set = True
        log_event(log, "node condition set", node=self.node, NetworkUnavailable="False",
                  reason="FlannelIsUp")
