"""How a container is made from a WorkloadSpec: limits, env, ports, GPUs, labels.

A collaborator of DockerDriver: it holds the provider's engine, config and id. Host ports and
GPU devices come in the spec, allocated by the control plane."""

from __future__ import annotations

from typing import Any

import docker

from gpucloud.drivers.base import WorkloadSpec
from gpucloud.drivers.docker.config import DockerConfig
from gpucloud.drivers.docker.engine import Engine, EngineError
from gpucloud.drivers.docker.labels import (
    L_EXPOSE,
    L_GENERATION,
    L_GPUS,
    L_INSTANCE,
    L_MANAGED,
    L_PROVIDER,
    L_SINCE,
    command_args,
)


class ContainerBuilder:
    def __init__(self, engine: Engine, cfg: DockerConfig, provider_id: str):
        self.engine = engine
        self.cfg = cfg
        self.provider_id = provider_id

    def make(
        self,
        spec: WorkloadSpec,
        generation: int,
        ports: dict[tuple[int, str], int],
        name: str,
        since: int,
    ):
        env = dict(spec.environment)
        if spec.ssh_key and "SSH_PUBKEY" not in env:
            env["SSH_PUBKEY"] = spec.ssh_key
        published = {
            f"{port}/{'udp' if proto == 'udp' else 'tcp'}": host
            for (port, proto), host in ports.items()
        }
        labels = {
            L_MANAGED: "true",
            L_PROVIDER: self.provider_id,
            L_INSTANCE: spec.instance_id,
            L_GENERATION: str(generation),
            L_SINCE: str(since),
            L_EXPOSE: ",".join(f"{p}/{proto}={h}" for (p, proto), h in ports.items()),
        }
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            "labels": labels,
            "environment": env,
            "ports": published,
            "nano_cpus": int(spec.vcpu) * 1_000_000_000,
            "mem_limit": f"{int(spec.memory_gib)}g",
            "memswap_limit": f"{int(spec.memory_gib)}g",
            "pids_limit": self.cfg.pids_limit,
            "init": True,
            "detach": True,
            "stop_signal": "SIGTERM",
            "restart_policy": {"Name": self.cfg.restart_policy}
            if self.cfg.restart_policy != "no"
            else None,
        }
        if self.cfg.log_max_mib is not None:
            # A container that prints without end must not fill the provider's disk.
            kwargs["log_config"] = {"Type": "json-file",
                                    "Config": {"max-size": f"{self.cfg.log_max_mib}m"}}
        if spec.startup_command:
            kwargs["command"] = command_args(spec.startup_command)
        if self.cfg.network:
            kwargs["network"] = self.cfg.network
        if self.cfg.gpu_mode != "none" and spec.gpu_count > 0:
            devices = list(spec.gpu_devices)
            labels[L_GPUS] = ",".join(devices)
            self._gpu_kwargs(kwargs, spec.gpu_count, devices)
        return self._create_named(kwargs, spec.instance_id, name)

    def _create_named(self, kwargs: dict[str, Any], instance_id: str, name: str):
        client = self.engine.client
        try:
            return self.engine.call(client.containers.create, **kwargs)
        except EngineError as exc:
            if "already in use" not in str(exc) and "conflict" not in str(exc).lower():
                raise
            # Another worker made it between our lookup and create: take that one.
            try:
                return self.engine.call(client.containers.get, name)
            except docker.errors.NotFound:
                raise exc from None

    def _gpu_kwargs(self, kwargs: dict[str, Any], count: int, devices: list[str]) -> None:
        if self.cfg.gpu_mode == "nvidia":
            if devices:
                req = docker.types.DeviceRequest(
                    driver="nvidia", device_ids=devices, capabilities=[["gpu"]]
                )
            else:
                req = docker.types.DeviceRequest(
                    driver="nvidia", count=count, capabilities=[["gpu"]]
                )
            kwargs["device_requests"] = [req]
        elif self.engine.is_podman():
            kwargs["devices"] = devices  # Podman resolves CDI names given as devices
        else:
            kwargs["device_requests"] = [
                docker.types.DeviceRequest(driver="cdi", device_ids=devices)
            ]
