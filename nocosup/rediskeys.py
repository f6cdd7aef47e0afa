"""The Redis key layout, in one place. Every key starts with ``NOCOSUP_REDIS_PREFIX``.

=======================================  ======  ===========================================
key                                      type    what
=======================================  ======  ===========================================
``{p}:meta``                             hash    marks the config cache as built
                                                 (``schema``, ``built_at``); its absence tells
                                                 the supervisor Redis lost the cache
``{p}:apps``                             hash    app name -> app record JSON (config cache)
``{p}:envs``                             set     names of environments that ever registered
``{p}:env:{env}``                        hash    environment info: name, url, proxy_url,
                                                 version, registered_at
``{p}:env:{env}:inst:{instance}``        string  heartbeat of one worker process (JSON);
                                                 expires after 3 heartbeat intervals
``{p}:instances``                        zset    ``{env}/{instance}`` scored by the last
                                                 heartbeat (ms): lists instances without SCAN
``{p}:status:{app}``                     hash    ``{env}/{instance}`` -> {"status", "error",
                                                 "at"} as the worker last reported it
``{p}:env:{env}:cmds``                   stream  commands for an environment; one consumer
                                                 group per worker instance, so every replica
                                                 sees every command
``{p}:sup:{instance}:replies``           stream  command results for one supervisor process
``{p}:cmd:{id}``                         hash    ``{instance}`` -> result JSON; kept 10 min:
                                                 lets a late waiter find its answer and makes
                                                 redelivered commands idempotent
``{p}:lock:app:{app}``                   string  startup lock (token, PX TTL, renewed)
``{p}:reclaim:{env}:{group}``            string  who finishes a dead instance's commands
                                                 (SET NX, 60 s)
``{p}:events``                           pubsub  wake-up hints (status and environment
                                                 changes); never the source of truth
=======================================  ======  ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def apps(self) -> str:
        return f"{self.prefix}:apps"

    @property
    def envs(self) -> str:
        return f"{self.prefix}:envs"

    def env(self, env: str) -> str:
        return f"{self.prefix}:env:{env}"

    def instance(self, env: str, instance: str) -> str:
        return f"{self.prefix}:env:{env}:inst:{instance}"

    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    def status(self, app: str) -> str:
        return f"{self.prefix}:status:{app}"

    def commands(self, env: str) -> str:
        return f"{self.prefix}:env:{env}:cmds"

    def replies(self, instance: str) -> str:
        return f"{self.prefix}:sup:{instance}:replies"

    def command(self, request_id: str) -> str:
        return f"{self.prefix}:cmd:{request_id}"

    def reclaim(self, env: str, group: str) -> str:
        return f"{self.prefix}:reclaim:{env}:{group}"

    def lock(self, app: str) -> str:
        return f"{self.prefix}:lock:app:{app}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"


def member(env: str, instance: str) -> str:
    """The ``{env}/{instance}`` name used in the instances zset and status hashes."""
    return f"{env}/{instance}"


def split_member(value: str) -> tuple[str, str]:
    env, _, instance = value.partition("/")
    return env, instance
