"""minicloud: a small OpenStack-shaped cloud that really runs two releases side by side.

It exists to punish a wrong upgrade order: RPC and objects carry versions,
1.0 code rejects 2.0 messages, a 2.0 API needs 2.0 conductors, and the schema
moves `instances.host` into `placements` with expand / migrate / contract.

* `layout`   the cloud directory: hosts, their config, the shared database
* `db`       schema and every query (SQLite, WAL)
* `rpc`      versioned RPC over HTTP
* `services` the conductor, api and compute apps, per release
* `service`  `python -m orchestrator.minicloud.service SERVICE`
* `ctl`, `manage`  the commands run on hosts (`minicloud-ctl`, `minicloud-manage`);
  releases sit side by side on a host, and each `minicloud-manage` is one
  release's code: 1.0's cannot expand, migrate or contract for 2.0
* `lb`       a TCP load balancer with a subset of HAProxy's runtime API
* `loadgen`  steady API traffic through the load balancer, with a report
* `control`  async helpers to run host commands and start/stop a whole cloud
* `inventory` an orchestrator inventory describing a cloud (for `playbooks/minicloud.yaml`)

Injected faults, one per line in a host's `etc/fault`: `unhealthy-2.0` (health
check answers 500 under 2.0), `crash-2.0` (a 2.0 service exits at start),
`hang-install-2.0` (`minicloud-ctl install 2.0` or `stage 2.0` never returns).
"""

from orchestrator.errors import OrchestratorError


class MinicloudError(OrchestratorError):
    """A minicloud command or service could not do what it was asked."""
