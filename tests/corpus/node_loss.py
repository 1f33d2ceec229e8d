"""A node lost mid-run, for real: a two-node Ray cluster on this machine (``ray.cluster_utils``),
the second node offering the custom resource ``helpers`` (so the kNN shards
are placed on it): the full audit with a model runs once undisturbed (``baseline``: the two-node
run that the test compares with a single-node run of the same audit), then again with the second
node's raylet killed while the kNN stage queries its shards (``disturbed``).

Run as a script (its own Ray): ``python node_loss.py SOURCE WORKDIR``; prints a JSON line with
both runs' ids and whether the node was removed. The test compares the two runs' tables.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time


#: The audit both clusters run: a model (a deterministic custom embedder), two kNN shards, small
#: blocks so that every stage has several tasks. The two-node runs add ``ray.helper_resources``.
SETS = ["models=[{name: 'custom_models:channel_stats_embedder', alias: stats}]", "io.rows_per_block=8",
        "embed.batch_size=8", "embed.num_cpus_per_actor=0.5", "ray.task_num_cpus=0.5", "knn.shards=2",
        "knn.num_cpus_per_shard=0.25", "ray.progress_interval_s=0.5"]


class StageWatcher(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def main(source: str, workdir: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from ood_ray.config import load_config
    from ood_ray.pipeline import run_audit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * 2**20, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    helper_node = cluster.add_node(num_cpus=1, resources={"helpers": 1}, object_store_memory=150 * 2**20)
    ray.init(address=cluster.address)
    sets = [*SETS, "ray.helper_resources={helpers: 1}"]
    baseline = run_audit(load_config(None, sets, source=source, out=f"{workdir}/baseline"))
    watcher = StageWatcher("stage knn: started")
    logging.getLogger("ood_ray").addHandler(watcher)
    removed = {}

    def on_helper_node() -> list[str]:
        actors = ray.state.actors().values()  # the GCS's table (no dashboard needed)
        return sorted({a["ActorClassName"] for a in actors if a.get("State") == "ALIVE"
                       and (a.get("Address") or {}).get("NodeID") == helper_node.node_id
                       and a["ActorClassName"] == "IndexShard"})

    def lose_node() -> None:
        if not watcher.seen.wait(timeout=600):
            return
        deadline = time.time() + 120
        while time.time() < deadline and "IndexShard" not in on_helper_node():
            time.sleep(0.1)
        time.sleep(0.5)  # the shards are built and being queried
        removed["helpers_on_lost_node"] = on_helper_node()
        cluster.remove_node(helper_node, allow_graceful=False)
        removed["at"] = time.time()

    def guarded() -> None:
        try:
            lose_node()
        except Exception as exc:  # noqa: BLE001 - reported in the result line
            removed["error"] = repr(exc)

    thread = threading.Thread(target=guarded, daemon=True)
    thread.start()
    disturbed = run_audit(load_config(None, sets, source=source, out=f"{workdir}/disturbed"))
    thread.join(timeout=5)
    print(json.dumps({"baseline": baseline["run_id"], "disturbed": disturbed["run_id"], "removed": removed,
                      "rows": [disturbed["objects_in"], disturbed["rows_out"]]}), flush=True)
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
