"""Typed application keys (aiohttp `web.AppKey`): what the app holds."""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchestrator.api.feed import Feeds
from orchestrator.api.limits import StreamSlots
from orchestrator.api.metrics import Metrics
from orchestrator.daemonconfig import SecretSources
from orchestrator.engine.manager import UpgradeManager
from orchestrator.store.role import Role

MANAGER = web.AppKey("manager", UpgradeManager)
METRICS = web.AppKey("metrics", Metrics)
# set on the first stop signal: no new upgrades, event streams end
STOPPING = web.AppKey("stopping", asyncio.Event)
SUBMIT_LOCK = web.AppKey("submit_lock", asyncio.Lock)
# submitted documents parsing in worker threads at once; the rest wait their turn
PARSE_SLOTS = web.AppKey("parse_slots", asyncio.Semaphore)
# request key: the name of the token that authenticated the request (one
# static token today, named "default"; journaled with every control action)
WHO = web.RequestKey("who", str)
# where the daemon's configuration lets secrets come from (default: nowhere)
SECRET_SOURCES = web.AppKey("secret_sources", SecretSources)
# open event streams per token
STREAMS = web.AppKey("streams", StreamSlots)
# one journal reader per upgrade with event streams open, shared by them
FEEDS = web.AppKey("feeds", Feeds)
# this daemon's place among its peers on a shared store (SQLite: the sole leader)
ROLE = web.AppKey("role", Role)
