"""The Redis key layout, in one place. Every key starts with ``NOCOSUP_REDIS_PREFIX``.

=======================================  ======  ===========================================
key                                      type    what
=======================================  ======  ===========================================
``{p}:meta``                             hash    marks the config cache as built
                                                 (``schema``, ``built_at``, ``count``); its
                                                 absence tells the supervisor Redis lost it
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
``{p}:seen:{app}``                       hash    ``{env}/{instance}`` -> epoch ms of the
                                                 app's last request there (batched)
``{p}:env:{env}:cmds``                   stream  commands for an environment; one consumer
                                                 group per worker instance, so every replica
                                                 sees every command
``{p}:env:{env}:dead``                   stream  dead letters: command entries a worker could
                                                 not run or answer, with the reason (capped)
``{p}:env:{env}:inst:{instance}:resync`` string  asks that instance to republish its statuses
                                                 (the supervisor found one unreadable)
``{p}:sup:{instance}:replies``           stream  command results for one supervisor process
                                                 (expires unless its owner renews it)
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

import re
from dataclasses import dataclass

SCHEMA_VERSION = "1"
#: What an environment or instance name may be (ENVIRONMENT_NAME, NOCOSUP_INSTANCE_ID):
#: names read back from Redis are checked against it before they go into a key.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


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

    def seen(self, app: str) -> str:
        return f"{self.prefix}:seen:{app}"

    def commands(self, env: str) -> str:
        return f"{self.prefix}:env:{env}:cmds"

    def replies(self, instance: str) -> str:
        return f"{self.prefix}:sup:{instance}:replies"

    def is_reply_stream(self, key: str) -> bool:
        """Whether ``key`` is a supervisor's reply stream: the only keys a worker answers to."""
        head, tail = f"{self.prefix}:sup:", ":replies"
        if not (key.startswith(head) and key.endswith(tail)):
            return False
        return NAME.fullmatch(key[len(head) : len(key) - len(tail)]) is not None

    def dead(self, env: str) -> str:
        return f"{self.prefix}:env:{env}:dead"

    def resync(self, env: str, instance: str) -> str:
        return f"{self.prefix}:env:{env}:inst:{instance}:resync"

    def command(self, request_id: str) -> str:
        return f"{self.prefix}:cmd:{request_id}"

    def reclaim(self, env: str, group: str) -> str:
        return f"{self.prefix}:reclaim:{env}:{group}"

    def lock(self, app: str) -> str:
        return f"{self.prefix}:lock:app:{app}"

    def admin_lock(self, app: str) -> str:
        """Serialises admin operations on one app across supervisor replicas."""
        return f"{self.prefix}:lock:admin:{app}"

    @property
    def registry_stamp(self) -> str:
        """Bumped on every registry write: replicas reload when it moves."""
        return f"{self.prefix}:registry:stamp"

    @property
    def upkeep_lease(self) -> str:
        """Held by the one supervisor replica that does the background duties."""
        return f"{self.prefix}:lease:upkeep"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"


def member(env: str, instance: str) -> str:
    """The ``{env}/{instance}`` name used in the instances zset and status hashes."""
    return f"{env}/{instance}"


def split_member(value: str) -> tuple[str, str]:
    env, _, instance = value.partition("/")
    return env, instance


def valid_member(value: object) -> bool:
    """Whether ``value`` (read from Redis) is an ``{env}/{instance}`` of two valid names."""
    if not isinstance(value, str):
        return False
    env, sep, instance = value.partition("/")
    return bool(sep) and NAME.fullmatch(env) is not None and NAME.fullmatch(instance) is not None
